"""detectron2 configuration of the SOLOv2 engine.

* :func:`add_solov2_config` adds ``MODEL.SAP_SOLOV2``: one key per field of
  :class:`~segtrain.model.SOLOv2Config` (its name in capitals, ``INFERENCE.*`` for the inference
  thresholds), generated from the dataclasses so that no setting can be left behind, plus
  ``SAP.*`` for the training rules both engines share (``CLIP_GRAD_NORM``, ``IMAGES_PER_PASS``,
  ``KEEP_CHECKPOINTS``, ``LOG_PERIOD``). It sets ``META_ARCHITECTURE = "SapSOLOv2"`` (not
  ``"SOLOv2"``, which AdelaiDet registers), ``MASK_ON``, bitmask masks, RGB input and the 1x solver.
* :func:`solov2_config_from_cfg` reads the network back; :func:`build_d2_config` turns a
  :class:`~segtrain.config.TrainConfig` into a detectron2 config through the same
  :func:`~segtrain.config.model_config_of` and :func:`~segtrain.config.lr_schedule_of` as the
  torch engine.
* :func:`refusals` names, in one sentence, an option this engine cannot honour.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from pseudolabel.core.device import pick_device
from pseudolabel.core.errors import InputError

from ..config import D2_SUBDIR, TrainConfig, lr_schedule_of, model_config_of
from ..data import DataStats, parse_min_sizes
from ..model import SOLOv2Config

#: the sentence for ``--num-gpus``/``--num-machines`` above 1 without CUDA (detectron2's launcher
#: starts one process per GPU; the torch engine under torchrun is the multi-process CPU path)
CPU_LAUNCH_REFUSAL = ("--num-gpus/--num-machines ask the detectron2 engine for {n} processes, one per CUDA GPU, "
                      "and this machine has none: on CPUs run the torch engine under torchrun instead "
                      "(torchrun --nproc_per_node {n} $(which sap) train --engine torch ...)")
from ..postprocess import InferenceParams

ARCH_NAME = "SapSOLOv2"
NODE = "SAP_SOLOV2"


def _keys(cls: type) -> dict[str, str]:
    """Field name → config key of a dataclass (``inference`` becomes a node of its own)."""
    return {f.name: f.name.upper() for f in dataclasses.fields(cls) if f.name != "inference"}


def _yacs(value: Any) -> Any:
    return [_yacs(v) for v in value] if isinstance(value, (tuple, list)) else value


def write_model_keys(cfg: Any, model: SOLOv2Config) -> None:
    """Store every setting of ``model`` under ``cfg.MODEL.SAP_SOLOV2``."""
    from detectron2.config import CfgNode as CN

    node = CN()
    for name, key in _keys(SOLOv2Config).items():
        node[key] = _yacs(getattr(model, name))
    node.INFERENCE = CN({key: _yacs(getattr(model.inference, name)) for name, key in _keys(InferenceParams).items()})
    setattr(cfg.MODEL, NODE, node)


def solov2_config_from_cfg(cfg: Any) -> SOLOv2Config:
    """The :class:`SOLOv2Config` that a detectron2 config describes."""
    node = cfg.MODEL[NODE]
    values = {name: node[key] for name, key in _keys(SOLOv2Config).items()}
    values["inference"] = {name: node.INFERENCE[key] for name, key in _keys(InferenceParams).items()}
    return SOLOv2Config.from_dict(values)


def add_solov2_config(cfg: Any) -> Any:
    """Add the ``MODEL.SAP_SOLOV2`` and ``SAP`` keys (AdelaiDet's defaults) and SOLOv2's input and solver."""
    from detectron2.config import CfgNode as CN

    write_model_keys(cfg, SOLOv2Config())
    cfg.MODEL.META_ARCHITECTURE = ARCH_NAME
    cfg.MODEL.MASK_ON = True  # else DatasetMapper drops every mask
    cfg.SAP = CN({"CLIP_GRAD_NORM": 35.0, "IMAGES_PER_PASS": 2, "KEEP_CHECKPOINTS": 3, "LOG_PERIOD": 20})
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (640, 672, 704, 736, 768, 800)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = 1333
    cfg.INPUT.MIN_SIZE_TEST = 800
    cfg.INPUT.MAX_SIZE_TEST = 1333
    cfg.SOLVER.IMS_PER_BATCH = 16
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.WARMUP_FACTOR = 0.01
    cfg.SOLVER.WARMUP_ITERS = 1000
    cfg.SOLVER.STEPS = (60000, 80000)
    cfg.SOLVER.MAX_ITER = 90000
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False  # detectron2 clips per parameter; SAP.CLIP_GRAD_NORM clips them all
    cfg.TEST.DETECTIONS_PER_IMAGE = InferenceParams().max_per_img
    return cfg


def dataset_name(prefix: str, json_path: str, images: str) -> str:
    """A catalog name that is the same for the same files (so re-registering is a no-op)."""
    digest = hashlib.sha1(f"{Path(json_path).resolve()}|{Path(images).resolve()}".encode()).hexdigest()[:10]
    return f"sap_{prefix}_{digest}"


def refusals(tcfg: TrainConfig, stats: DataStats) -> None:
    """Raise :class:`InputError` for what this engine cannot do as asked (one sentence each)."""
    if tcfg.flip_prob not in (0.0, 0.5):
        raise InputError(f"the detectron2 engine flips with probability 0.5 or not at all (INPUT.RANDOM_FLIP), "
                         f"not {tcfg.flip_prob}: use --engine torch for another probability")
    if stats.images_missing:
        raise InputError(f"{stats.images_missing} images of {Path(tcfg.train).name} are missing and the detectron2 "
                         "engine reads every image its file names: remove them from the file or use --engine torch")
    if stats.without_mask:
        raise InputError(f"{stats.without_mask} annotations of {Path(tcfg.train).name} have no mask, which "
                         "detectron2's DatasetMapper cannot read: remove them or use --engine torch")
    if tcfg.mps_weight > 0 and stats.with_alternatives:
        raise InputError(f"{stats.with_alternatives} annotations carry 'alternatives' for the multi-mask loss, which "
                         "the detectron2 engine does not train: pass --mps-weight 0 to train without it, or use "
                         "--engine torch")


def build_d2_config(tcfg: TrainConfig, num_classes: int) -> Any:
    """The detectron2 config (not frozen) that trains what ``tcfg`` asks for."""
    from detectron2.config import get_cfg

    cfg = add_solov2_config(get_cfg())
    write_model_keys(cfg, model_config_of(tcfg, num_classes))
    device = pick_device(tcfg.device, 0, mps=False)
    sched = lr_schedule_of(tcfg)
    s = cfg.SOLVER
    s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER = tcfg.batch, sched.base_lr, sched.max_iter
    s.STEPS, s.GAMMA = tuple(sched.steps), sched.gamma
    s.WARMUP_ITERS, s.WARMUP_FACTOR = sched.warmup_iters, sched.warmup_factor
    s.MOMENTUM, s.WEIGHT_DECAY = tcfg.momentum, tcfg.weight_decay
    s.CHECKPOINT_PERIOD = tcfg.checkpoint_period or sched.max_iter + 1  # 0: only model_final
    s.AMP.ENABLED = bool(tcfg.amp and device.type == "cuda")  # detectron2's AMPTrainer needs CUDA
    cfg.SAP.CLIP_GRAD_NORM = float(tcfg.clip_grad)
    cfg.SAP.IMAGES_PER_PASS = tcfg.images_per_pass
    cfg.SAP.KEEP_CHECKPOINTS = tcfg.keep_checkpoints
    cfg.SAP.LOG_PERIOD = tcfg.log_period
    cfg.INPUT.MIN_SIZE_TRAIN = parse_min_sizes(tcfg.min_size)
    cfg.INPUT.MAX_SIZE_TRAIN = tcfg.max_size
    cfg.INPUT.MIN_SIZE_TEST = tcfg.test_size_resolved()
    cfg.INPUT.MAX_SIZE_TEST = tcfg.max_size
    cfg.INPUT.RANDOM_FLIP = "horizontal" if tcfg.flip_prob > 0 else "none"
    cfg.DATALOADER.NUM_WORKERS = tcfg.workers
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = not tcfg.keep_empty_images
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = True
    cfg.DATASETS.TRAIN = (dataset_name("train", tcfg.train, tcfg.images),)
    cfg.DATASETS.TEST = (dataset_name("val", tcfg.val, tcfg.val_images),) if tcfg.val else ()
    cfg.TEST.EVAL_PERIOD = tcfg.eval_period if tcfg.val else 0
    cfg.MODEL.DEVICE = device.type if device.type == "cuda" else str(device)
    cfg.OUTPUT_DIR = str(Path(tcfg.out) / D2_SUBDIR)
    cfg.SEED = tcfg.seed
    if tcfg.num_gpus * tcfg.num_machines > 1 and device.type != "cuda":  # also checked before any data is read
        raise InputError(CPU_LAUNCH_REFUSAL.format(n=tcfg.num_gpus * tcfg.num_machines))
    return cfg

