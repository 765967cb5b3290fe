"""Promptable segmenters behind one interface: SAM, SAM 2.1 and HQ-SAM.

:mod:`.base` (the interface :class:`~.base.PromptEngine`, :class:`~.base.ImageEmbedding`, frame
geometry, precision), :mod:`.registry` (named engines, official checkpoints, what each caches,
availability; imports nothing heavy), :mod:`.loading` (downloads, loading weights, building an
engine by name), and one module per family: :mod:`.sam1`, :mod:`.sam2`, :mod:`.hq`. A family's
package (``segment_anything``, ``sam2``, ``segment_anything_hq``) is imported only when an engine
of that family is built.

Import the modules themselves (``from pseudolabel.core.engines.loading import create_engine``);
this package imports nothing.
"""
