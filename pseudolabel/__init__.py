"""Point annotations → instance masks: the shared core, stages 1–2, the cross-stage tools and the
orchestration of `sap` (stages 3 and 4 are the sibling packages ``refine`` and ``segtrain``).

Layers, bottom to top (imports only point down; ``tests/test_layering.py`` keeps it so):

1. :mod:`pseudolabel.core` — COCO/RLE I/O, images, errors, progress, config, points, the proposal
   cache format, the SAM engine, the shared ResNet-FPN;
2. the stages — :mod:`pseudolabel.proposals` (SAM proposals), :mod:`pseudolabel.selector`
   (SAPNet), ``refine`` (SAMRefiner), ``segtrain`` (SOLOv2);
3. cross-stage tools — :mod:`pseudolabel.evaluate`, :mod:`pseudolabel.viz`, :mod:`pseudolabel.review`,
   :mod:`pseudolabel.export`, and :mod:`pseudolabel.testing` (data generators for tests and benchmarks);
4. orchestration — :mod:`pseudolabel.pipeline`, :mod:`pseudolabel.commands` and ``cli.py``.

Importing this package imports nothing else; see docs/architecture.md.
"""

__version__ = "0.1.0"  # the only place: pyproject.toml reads it (dynamic version)
