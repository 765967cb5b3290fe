"""Data generators for tests, benchmarks and `sap corrupt`, kept out of the stage packages.

Modules: :mod:`.synthetic` (SAM-like bags of known kinds made from ground truth, and a proposal
cache of them), :mod:`.scenes` (learnable textured-shape scenes for the selector), :mod:`.readout`
(what a trained selector's PSM says per proposal) and :mod:`.corrupt` (DAVIS-style coarse masks
made from ground truth). A tool (layer 3): it may import the stages and the core; no stage
imports it. Importing this package imports nothing.
"""
