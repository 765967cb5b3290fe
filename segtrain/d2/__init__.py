"""The detectron2 engine of ``sap train`` (``--engine detectron2``): the same SOLOv2 modules, trained
by detectron2's own pieces.

Data: the training file is registered with ``register_coco_instances`` and read by detectron2's
``DatasetMapper`` (``MODEL.MASK_ON``, ``INPUT.MASK_FORMAT = "bitmask"``) through
``build_detection_train_loader`` (``TrainingSampler``, batches grouped by orientation). Training:
``DefaultTrainer`` (SGD from ``build_optimizer`` with ``sap``'s global-norm clipping, the
``WarmupMultiStepLR`` schedule, AMP on CUDA only) under ``launch`` for several GPUs or machines.
Checkpoints: ``DetectionCheckpointer`` in ``RUN/detectron2/``, each carrying the run's options so
that ``--resume`` can check them. Evaluation: ``COCOEvaluator`` on ``--val``. At the end
``RUN/model_final.pth`` is written in ``sap``'s own format, so ``sap predict`` reads it like a
torch-engine run.

Modules: ``settings`` (the ``MODEL.SAP_SOLOV2`` keys, a :class:`~segtrain.config.TrainConfig` →
detectron2 config, and what this engine refuses), ``meta_arch`` (the ``SapSOLOv2``
meta-architecture), ``trainer`` (the trainer and :func:`train_detectron2`). detectron2 is imported
only inside their functions: the rest of ``sap`` never needs it.
"""

from __future__ import annotations

from pseudolabel.core.errors import InputError

INSTALL_HELP = ("the detectron2 engine needs detectron2, which is built from its source repository: "
                "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git' "
                "(or use --engine torch)")


def require_detectron2() -> None:
    """Raise :class:`InputError` with one sentence of install help when detectron2 is missing."""
    try:
        import detectron2  # noqa: F401
    except ImportError:
        raise InputError(INSTALL_HELP) from None
