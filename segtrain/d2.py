"""The detectron2 engine of ``sap train`` (``--engine detectron2``): the same SOLOv2 modules,
trained by detectron2's ``DefaultTrainer`` and ``launch``, evaluated by ``COCOEvaluator``.

This is the only module of ``sap`` that imports detectron2, and only inside its functions:
detectron2 is installed from its source repository, so the rest of ``sap`` never needs it.

* :func:`add_solov2_config` adds ``MODEL.SOLOV2.*`` (defaults of :class:`SOLOv2Config`, i.e.
  AdelaiDet's) and sets ``META_ARCHITECTURE = "SOLOv2"``, ``INPUT.MASK_FORMAT = "bitmask"``
  (RLE masks), ``INPUT.FORMAT = "RGB"`` and the 1x solver;
* :func:`register_solov2` registers the ``SOLOv2`` meta-architecture in ``META_ARCH_REGISTRY``;
* :func:`train_detectron2` registers the pseudo-label JSON with ``register_coco_instances``,
  trains (several GPUs / machines through ``launch``), and writes ``RUN_DIR/model_final.pth``
  in ``sap``'s own checkpoint format so that ``sap predict`` reads it like a torch-engine run.

The multi-mask auxiliary loss needs the ``alternatives`` of each annotation, which detectron2's
dataset mapper drops: it is used by the torch engine only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pseudolabel.core.errors import InputError
from pseudolabel.core.progress import logger

from .model import SOLOv2Config
from .postprocess import InferenceParams
from .targets import targets_from_masks

INSTALL_HELP = ("the detectron2 engine needs detectron2, which is installed from its source repository: "
                "pip install 'git+https://github.com/facebookresearch/detectron2.git' (or use --engine torch)")


def require_detectron2() -> None:
    """Raise :class:`InputError` with one sentence of install help when detectron2 is missing."""
    try:
        import detectron2  # noqa: F401
    except ImportError:
        raise InputError(INSTALL_HELP) from None


def add_solov2_config(cfg: Any) -> Any:
    """Add the ``MODEL.SOLOV2`` keys (AdelaiDet defaults) and SOLOv2's input/solver settings."""
    from detectron2.config import CfgNode as CN

    d = SOLOv2Config()
    inf = d.inference
    cfg.MODEL.META_ARCHITECTURE = "SOLOv2"
    cfg.MODEL.SOLOV2 = s = CN()
    s.NUM_CLASSES = d.num_classes
    s.BACKBONE = d.backbone
    s.BACKBONE_WEIGHTS = d.backbone_weights
    s.BACKBONE_NORM = d.backbone_norm
    s.FREEZE_AT = d.freeze_at
    s.FPN_CHANNELS = d.fpn_channels
    s.NUM_GRIDS = list(d.num_grids)
    s.FPN_INSTANCE_STRIDES = list(d.strides)
    s.FPN_SCALE_RANGES = [list(r) for r in d.scale_ranges]
    s.SIGMA = d.sigma
    s.INSTANCE_CHANNELS = d.head_channels
    s.NUM_INSTANCE_CONVS = d.head_convs
    s.PRIOR_PROB = d.prior_prob
    s.MASK_CHANNELS = d.mask_channels
    s.NUM_MASKS = d.kernel_dim
    s.LOSS = CN()
    s.LOSS.FOCAL_ALPHA = d.focal_alpha
    s.LOSS.FOCAL_GAMMA = d.focal_gamma
    s.LOSS.FOCAL_WEIGHT = d.focal_weight
    s.LOSS.DICE_WEIGHT = d.dice_weight
    s.LOSS.DICE_EPS = d.dice_eps
    s.SCORE_THR = inf.score_thr
    s.MASK_THR = inf.mask_thr
    s.NMS_PRE = inf.nms_pre
    s.UPDATE_THR = inf.update_thr
    s.MAX_PER_IMG = inf.max_per_img
    s.NMS_KERNEL = inf.nms_kernel
    s.NMS_SIGMA = inf.nms_sigma
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
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 35.0
    cfg.TEST.DETECTIONS_PER_IMAGE = inf.max_per_img
    return cfg


def solov2_config_from_cfg(cfg: Any) -> SOLOv2Config:
    """The :class:`SOLOv2Config` that a detectron2 config describes."""
    s = cfg.MODEL.SOLOV2
    return SOLOv2Config(
        num_classes=s.NUM_CLASSES, backbone=s.BACKBONE, backbone_weights=s.BACKBONE_WEIGHTS,
        backbone_norm=s.BACKBONE_NORM, freeze_at=s.FREEZE_AT, fpn_channels=s.FPN_CHANNELS,
        num_grids=tuple(s.NUM_GRIDS), strides=tuple(s.FPN_INSTANCE_STRIDES),
        scale_ranges=tuple(tuple(r) for r in s.FPN_SCALE_RANGES), sigma=s.SIGMA,
        head_channels=s.INSTANCE_CHANNELS, head_convs=s.NUM_INSTANCE_CONVS, prior_prob=s.PRIOR_PROB,
        mask_channels=s.MASK_CHANNELS, kernel_dim=s.NUM_MASKS, focal_alpha=s.LOSS.FOCAL_ALPHA,
        focal_gamma=s.LOSS.FOCAL_GAMMA, focal_weight=s.LOSS.FOCAL_WEIGHT, dice_weight=s.LOSS.DICE_WEIGHT,
        dice_eps=s.LOSS.DICE_EPS, mps_weight=0.0,
        inference=InferenceParams(score_thr=s.SCORE_THR, mask_thr=s.MASK_THR, nms_pre=s.NMS_PRE,
                                  update_thr=s.UPDATE_THR, max_per_img=s.MAX_PER_IMG, nms_kernel=s.NMS_KERNEL,
                                  nms_sigma=s.NMS_SIGMA),
    )


def register_solov2() -> type:
    """Register (once) and return the ``SOLOv2`` meta-architecture of ``META_ARCH_REGISTRY``."""
    from detectron2.modeling import META_ARCH_REGISTRY
    from detectron2.structures import Boxes, Instances

    if "SOLOv2" in META_ARCH_REGISTRY:
        return META_ARCH_REGISTRY.get("SOLOv2")

    class SOLOv2(nn.Module):
        """detectron2 meta-architecture around :class:`segtrain.model.SOLOv2` (same modules)."""

        def __init__(self, cfg: Any) -> None:
            super().__init__()
            from .model import build_model

            self.model = build_model(solov2_config_from_cfg(cfg), load_backbone_weights=True)
            self.model.to(torch.device(cfg.MODEL.DEVICE))

        @property
        def device(self) -> torch.device:
            return self.model.device

        def forward(self, batched_inputs: list[dict[str, Any]]):
            images = [x["image"] for x in batched_inputs]  # 3×H×W uint8 RGB (INPUT.FORMAT = RGB)
            if self.training:
                batch, sizes = self.model.preprocess(images)
                targets = []
                for x in batched_inputs:
                    inst = x["instances"]
                    targets.append(targets_from_masks(inst.gt_masks.tensor, inst.gt_classes))
                losses = self.model(batch, sizes, targets)
                return {"loss_cate": losses["loss_cate"], "loss_mask": losses["loss_mask"]}
            originals = [(int(x.get("height", im.shape[-2])), int(x.get("width", im.shape[-1])))
                         for x, im in zip(batched_inputs, images)]
            outputs = []
            for pred, hw in zip(self.model.predict(images, originals), originals):
                inst = Instances(hw)
                inst.pred_masks = pred.masks
                inst.scores = pred.scores
                inst.pred_classes = pred.labels
                inst.pred_boxes = Boxes(pred.boxes)
                outputs.append({"instances": inst})
            return outputs

    META_ARCH_REGISTRY.register(SOLOv2)
    return SOLOv2


def _dataset_name(prefix: str, json_path: str, images: str) -> str:
    digest = hashlib.sha1(f"{Path(json_path).resolve()}|{Path(images).resolve()}".encode()).hexdigest()[:10]
    return f"sap_{prefix}_{digest}"


def _register(name: str, json_path: str, images: str) -> None:
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, json_path, images)


def build_d2_config(tcfg: Any, num_classes: int) -> Any:
    """A frozen detectron2 config for a :class:`~segtrain.engine.TrainConfig`."""
    from detectron2.config import get_cfg

    from .data import parse_min_sizes
    from .config import lr_schedule_of

    cfg = add_solov2_config(get_cfg())
    base = solov2_config_from_cfg(cfg)
    mcfg = SOLOv2Config.from_dict({**base.to_dict(), "num_classes": num_classes, "backbone": tcfg.backbone,
                                   "backbone_weights": str(tcfg.backbone_weights), **tcfg.model})
    s = cfg.MODEL.SOLOV2
    s.NUM_CLASSES, s.BACKBONE, s.BACKBONE_WEIGHTS = mcfg.num_classes, mcfg.backbone, mcfg.backbone_weights
    s.INSTANCE_CHANNELS, s.NUM_INSTANCE_CONVS = mcfg.head_channels, mcfg.head_convs
    s.MASK_CHANNELS, s.NUM_MASKS = mcfg.mask_channels, mcfg.kernel_dim
    sched = lr_schedule_of(tcfg)
    cfg.SOLVER.IMS_PER_BATCH = tcfg.batch
    cfg.SOLVER.BASE_LR = sched.base_lr
    cfg.SOLVER.MAX_ITER = sched.max_iter
    cfg.SOLVER.STEPS = tuple(sched.steps)
    cfg.SOLVER.WARMUP_ITERS = sched.warmup_iters
    cfg.SOLVER.WARMUP_FACTOR = sched.warmup_factor
    cfg.SOLVER.MOMENTUM = tcfg.momentum
    cfg.SOLVER.WEIGHT_DECAY = tcfg.weight_decay
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = tcfg.clip_grad
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = bool(tcfg.clip_grad and tcfg.clip_grad > 0)
    cfg.SOLVER.CHECKPOINT_PERIOD = tcfg.checkpoint_period or sched.max_iter  # 0 = at the end only
    cfg.SOLVER.AMP.ENABLED = bool(tcfg.amp)
    cfg.INPUT.MIN_SIZE_TRAIN = parse_min_sizes(tcfg.min_size)
    cfg.INPUT.MAX_SIZE_TRAIN = tcfg.max_size
    cfg.INPUT.MIN_SIZE_TEST = tcfg.test_size_resolved()
    cfg.INPUT.MAX_SIZE_TEST = tcfg.max_size
    cfg.INPUT.RANDOM_FLIP = "horizontal" if tcfg.flip_prob > 0 else "none"
    cfg.DATALOADER.NUM_WORKERS = tcfg.workers
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = not tcfg.keep_empty_images
    cfg.DATASETS.TRAIN = (_dataset_name("train", tcfg.train, tcfg.images),)
    cfg.DATASETS.TEST = (_dataset_name("val", tcfg.val, tcfg.val_images),) if tcfg.val else ()
    cfg.TEST.EVAL_PERIOD = tcfg.eval_period if tcfg.val else 0
    cfg.MODEL.DEVICE = tcfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg.OUTPUT_DIR = str(Path(tcfg.out) / "detectron2")
    cfg.SEED = tcfg.seed
    return cfg


def _main(tcfg: Any, d2cfg: Any, resume: bool) -> None:
    """One process of the detectron2 run (called by ``launch``)."""
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator
    from detectron2.utils import comm

    register_solov2()
    _register(d2cfg.DATASETS.TRAIN[0], tcfg.train, tcfg.images)
    if tcfg.val:
        _register(d2cfg.DATASETS.TEST[0], tcfg.val, tcfg.val_images)

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            return COCOEvaluator(dataset_name, tasks=("segm",), output_dir=output_folder or cfg.OUTPUT_DIR)

    if comm.is_main_process():
        Path(d2cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
        (Path(d2cfg.OUTPUT_DIR) / "config.yaml").write_text(d2cfg.dump())
    trainer = Trainer(d2cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()


def train_detectron2(tcfg: Any, resume: bool = False):
    """Train with detectron2 and export ``RUN_DIR/model_final.pth`` for ``sap predict``.

    Raises:
        InputError: detectron2 missing (with install help), or the inputs are unusable.
    """
    require_detectron2()
    from detectron2.engine import launch

    from pseudolabel.core.coco import load_coco_json
    from pseudolabel.core.config import to_jsonable, write_run_config
    from pseudolabel.core.images import file_sha256

    from .checkpoint import save_checkpoint
    from .data import CategoryMap, check_same_categories, load_dataset
    from .config import TrainSummary

    records, cats, stats = load_dataset(tcfg.train, tcfg.images, missing="error",
                                        keep_empty_images=tcfg.keep_empty_images)
    if tcfg.val:
        check_same_categories(cats, CategoryMap.from_coco(load_coco_json(tcfg.val)), Path(tcfg.train).name,
                              Path(tcfg.val).name)
    if any(any(r.alternatives) for r in records) and tcfg.mps_weight > 0:
        logger.warning("the detectron2 engine does not use the 'alternatives' (MPS loss): use --engine torch")
    d2cfg = build_d2_config(tcfg, len(cats.ids))
    d2cfg.freeze()
    run_dir = Path(tcfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir / "config.yaml", "train", tcfg, engine="detectron2", categories=cats.to_dict(), data=stats)
    launch(_main, tcfg.num_gpus, num_machines=tcfg.num_machines, machine_rank=tcfg.machine_rank,
           dist_url=tcfg.dist_url, args=(tcfg, d2cfg, resume))
    if tcfg.machine_rank != 0:
        return None
    state = torch.load(Path(d2cfg.OUTPUT_DIR) / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    mcfg = solov2_config_from_cfg(d2cfg)
    norm = mcfg.backbone_norm
    if norm == "auto":  # the norm build_model chose: frozen BN exactly when BN buffers exist
        norm = "frozen_bn" if any(k.endswith("running_mean") for k in state) else "gn"
    payload = {"iter": d2cfg.SOLVER.MAX_ITER, "model": state,
               "model_config": SOLOv2Config.to_dict(SOLOv2Config.from_dict({**mcfg.to_dict(), "backbone_norm": norm})),
               "categories": cats.to_dict(),
               "train_config": {**to_jsonable(tcfg), "test_size_resolved": tcfg.test_size_resolved()},
               "train_sha256": file_sha256(tcfg.train)}
    save_checkpoint(run_dir / "model_final.pth", payload)
    return TrainSummary(run_dir, d2cfg.SOLVER.MAX_ITER, 0, None, None, stats)
