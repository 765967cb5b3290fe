"""Training SOLOv2 with detectron2's ``DefaultTrainer`` and ``launch`` (``sap train --engine detectron2``).

The run folder is the torch engine's (``config.yaml``, ``metrics.jsonl``, ``model_final.pth`` in
``sap``'s format, ``final_eval.json``) with detectron2's own files in ``RUN/detectron2/``: its
config, ``metrics.json``, TensorBoard events, ``DetectionCheckpointer`` checkpoints (each also
holds the run's options under ``"sap"``, which ``--resume`` checks) and, with ``--val``,
``inference/coco_instances_results.json`` from ``COCOEvaluator``.

What differs from the torch engine, by construction of detectron2's pieces: images are resized
with PIL and masks with nearest-neighbour sampling (the torch engine: OpenCV, masks bilinear ≥ 0.5);
the data stream is detectron2's ``TrainingSampler`` (a resumed run restarts it, so it is not
bit-identical to an uninterrupted one); the multi-mask loss is not trained (refused with a sentence).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pseudolabel.core.coco import load_coco_json
from pseudolabel.core.errors import InputError
from pseudolabel.core.cocoeval import AP_KEYS
from pseudolabel.core.config import to_jsonable, write_run_config
from pseudolabel.core.images import file_sha256
from pseudolabel.core.io import write_json_atomic, write_text_atomic
from pseudolabel.core.progress import logger

from . import require_detectron2
from ..checkpoint import last_checkpoint, load_checkpoint, save_checkpoint
from ..config import TrainConfig, TrainSummary, check_config, model_config_of, per_pass_of
from ..data import CategoryMap, check_same_categories, load_dataset
from ..run_folder import MetricsWriter, d2_last_checkpoint, loss_range, read_metrics, refuse_unresumable, trim_metrics
from .meta_arch import register_solov2
from .settings import CPU_LAUNCH_REFUSAL, build_d2_config, refusals

FAILED_LOG = "failed_images.jsonl"


def ap_values(latest: dict[str, tuple[float, int]]) -> dict[str, float]:
    """The mask AP family from detectron2's event storage (``segm/AP`` ...), in percent.

    ``COCOEvaluator`` reports NaN where COCOeval cannot compute a value (no prediction, no object
    of a size); like ``sap eval`` (:func:`~pseudolabel.core.cocoeval.coco_mask_ap`) we report 0.
    """
    values = {k: float(latest[f"segm/{k}"][0]) for k in AP_KEYS if f"segm/{k}" in latest}
    return {k: 0.0 if math.isnan(v) else v for k, v in values.items()}


def with_global_norm_clip(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.optim.Optimizer:
    """``optimizer`` whose ``step`` first clips all gradients together to L2 norm ``max_norm``.

    The torch engine's rule (detectron2's ``CLIP_TYPE: norm`` clips each parameter on its own).
    Under AMP, ``GradScaler.step`` unscales before it calls ``step``, so the norm is the true one.
    """
    if max_norm <= 0:
        return optimizer
    base = type(optimizer)

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return base.step(self, closure)

    optimizer.__class__ = type(base.__name__ + "GlobalNormClip", (base,), {"step": step})
    return optimizer


class RunMeta:
    """A checkpointable that puts the run's options in every detectron2 checkpoint (``"sap"``)."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    def state_dict(self) -> dict[str, Any]:
        return dict(self.meta)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass  # checked before training starts (train_detectron2)


def _mapper_class():
    from detectron2.data import DatasetMapper
    from detectron2.data.detection_utils import SizeMismatchError

    class ResilientMapper(DatasetMapper):
        """detectron2's ``DatasetMapper``; an image it cannot read is logged and yields ``None``,
        which detectron2's ``MapDataset`` answers with another image."""

        def __init__(self, cfg: Any, is_train: bool, failed_log: Path) -> None:
            super().__init__(cfg, is_train)
            self.failed_log = failed_log

        def __call__(self, dataset_dict: dict[str, Any]):
            try:
                return super().__call__(dataset_dict)
            except (OSError, SizeMismatchError) as e:
                logger.warning("skipped image %s: %s", dataset_dict["file_name"], e)
                with open(self.failed_log, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"image_id": dataset_dict["image_id"],
                                        "file_name": Path(dataset_dict["file_name"]).name}) + "\n")
                return None

    return ResilientMapper


def _metrics_writer_class():
    from detectron2.utils.events import EventWriter, get_event_storage

    class SapMetricsWriter(EventWriter):
        """Writes ``RUN/metrics.jsonl`` lines as the torch engine does (window means, eval lines)."""

        def __init__(self, path: Path, window: int, max_iter: int) -> None:
            self.out, self.window, self.max_iter = MetricsWriter(path), window, max_iter
            self.last_train = self.last_eval = -1

        def write(self) -> None:
            storage = get_event_storage()
            hist, latest = storage.histories(), storage.latest()
            done = hist["total_loss"].values()[-1][1] + 1 if "total_loss" in hist else 0
            if done > self.last_train:
                rec = {"iter": done, "lr": hist["lr"].latest() if "lr" in hist else None,
                       "loss": round(hist["total_loss"].avg(self.window), 5)}
                rec.update({k: round(hist[k].avg(self.window), 5) for k in ("loss_cate", "loss_mask") if k in hist})
                self.out.write(rec)
                self.last_train = done
            if "segm/AP" in latest and latest["segm/AP"][1] > self.last_eval:
                self.last_eval = latest["segm/AP"][1]
                self.out.write({"iter": min(self.last_eval + 1, self.max_iter), "type": "eval",
                                **ap_values(latest)})

    return SapMetricsWriter


def _trainer_class(run_dir: Path):
    from detectron2.data import build_detection_train_loader
    from detectron2.engine import DefaultTrainer, default_writers, hooks
    from detectron2.evaluation import COCOEvaluator
    from detectron2.solver import build_optimizer
    from detectron2.utils import comm

    mapper_cls, writer_cls = _mapper_class(), _metrics_writer_class()

    class Trainer(DefaultTrainer):
        """``DefaultTrainer`` with SOLOv2's evaluator, ``sap``'s clipping rule and run-folder writers."""

        @classmethod
        def build_optimizer(cls, cfg, model):
            return with_global_norm_clip(build_optimizer(cfg, model), cfg.SAP.CLIP_GRAD_NORM)

        @classmethod
        def build_train_loader(cls, cfg):
            return build_detection_train_loader(cfg, mapper=mapper_cls(cfg, True, Path(cfg.OUTPUT_DIR) / FAILED_LOG))

        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            return COCOEvaluator(dataset_name, tasks=("segm",), output_dir=output_folder or
                                 str(Path(cfg.OUTPUT_DIR) / "inference"))

        def build_hooks(self):
            out = []
            for h in super().build_hooks():
                if isinstance(h, hooks.PeriodicCheckpointer):
                    keep = self.cfg.SAP.KEEP_CHECKPOINTS
                    h = hooks.PeriodicCheckpointer(self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD,
                                                   max_to_keep=keep if keep > 0 else None)
                elif isinstance(h, hooks.PeriodicWriter):
                    h = hooks.PeriodicWriter(self.build_writers(), period=self.cfg.SAP.LOG_PERIOD)
                out.append(h)
            return out

        def build_writers(self):
            writers = default_writers(self.cfg.OUTPUT_DIR, self.max_iter)
            if comm.is_main_process():
                writers.append(writer_cls(run_dir / "metrics.jsonl", self.cfg.SAP.LOG_PERIOD, self.max_iter))
            return writers

    return Trainer


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (redirections are followed)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _quiet_detectron2_logs() -> None:
    """detectron2's INFO lines stay out, except its metric printer (progress, ETA); warnings go to stderr."""
    log = logging.getLogger("detectron2")
    if any(isinstance(h, _CurrentStderr) for h in log.handlers):
        return
    handler = _CurrentStderr()
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.name == "detectron2.utils.events")
    handler.setFormatter(logging.Formatter("[detectron2] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)  # INFO enabled: DefaultTrainer then leaves the logger alone
    log.propagate = False


def _main(tcfg: TrainConfig, d2cfg: Any, resume: bool, meta: dict[str, Any]) -> None:
    """One process of the detectron2 run (called by ``launch``)."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.utils import comm

    _quiet_detectron2_logs()
    register_solov2()
    for name, json_path, images in ((d2cfg.DATASETS.TRAIN[0], tcfg.train, tcfg.images),
                                    *((d2cfg.DATASETS.TEST[0], tcfg.val, tcfg.val_images) for _ in d2cfg.DATASETS.TEST)):
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, json_path, images)
    run_dir = Path(tcfg.out)
    trainer = _trainer_class(run_dir)(d2cfg)
    trainer.checkpointer.add_checkpointable("sap", RunMeta(meta))
    trainer.resume_or_load(resume=resume)
    trainer.train()
    if not comm.is_main_process():
        return
    net = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    save_checkpoint(run_dir / "model_final.pth", {"iter": d2cfg.SOLVER.MAX_ITER, "model": net.model.state_dict(),
                                                  "model_config": net.model.cfg.to_dict(), **meta}, run_dir)
    if d2cfg.DATASETS.TEST:
        final = ap_values(trainer.storage.latest())
        write_json_atomic(run_dir / "final_eval.json", {"iter": d2cfg.SOLVER.MAX_ITER, **final}, indent=2)


def _stored_run(run_dir: Path, resume: bool) -> tuple[Path | None, dict[str, Any] | None, int]:
    """The checkpoint already in ``run_dir`` (either engine's), its ``sap`` options and next iteration."""
    d2_last, sap_last = d2_last_checkpoint(run_dir), last_checkpoint(run_dir)
    found = d2_last or sap_last
    if found is None or not resume:
        return found, None, 0
    if d2_last is not None:
        ckpt = torch.load(d2_last, map_location="cpu", weights_only=False)
        return found, ckpt.get("sap"), int(ckpt.get("iteration", -1)) + 1
    ckpt = load_checkpoint(sap_last)
    return found, ckpt, int(ckpt["iter"])


def train_detectron2(tcfg: TrainConfig, resume: bool = False) -> TrainSummary | None:
    """Train with detectron2 and write ``RUN/model_final.pth`` for ``sap predict``.

    Returns the summary on machine 0 (``None`` on the others).

    Raises:
        InputError: detectron2 missing (with install help), an option this engine cannot honour,
            or unusable inputs (as the torch engine).
    """
    t_start = time.perf_counter()
    check_config(tcfg)
    if tcfg.num_gpus * tcfg.num_machines > 1 and not torch.cuda.is_available():
        raise InputError(CPU_LAUNCH_REFUSAL.format(n=tcfg.num_gpus * tcfg.num_machines))
    require_detectron2()
    from detectron2.engine import launch

    per_pass_of(tcfg, tcfg.num_gpus * tcfg.num_machines)
    records, cats, stats = load_dataset(tcfg.train, tcfg.images, missing="skip" if tcfg.skip_missing_images else
                                        "error", keep_empty_images=tcfg.keep_empty_images)
    refusals(tcfg, stats)
    if tcfg.val:
        check_same_categories(cats, CategoryMap.from_coco(load_coco_json(tcfg.val)), Path(tcfg.train).name,
                              Path(tcfg.val).name)
    run_dir = Path(tcfg.out)
    cfg_record, train_sha = to_jsonable(tcfg), file_sha256(tcfg.train)
    found, stored, start_iter = _stored_run(run_dir, resume)
    refuse_unresumable(run_dir, resume, found, stored, cfg_record, train_sha)
    d2cfg = build_d2_config(tcfg, len(cats.ids))
    d2cfg.freeze()
    meta = {"categories": cats.to_dict(), "train_config": {**cfg_record, "test_size_resolved": tcfg.test_size_resolved()},
            "train_sha256": train_sha}
    if tcfg.machine_rank == 0:
        Path(d2cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
        if stored is None:
            write_run_config(run_dir / "config.yaml", "train", tcfg, model=model_config_of(tcfg, len(cats.ids)),
                             categories=cats.to_dict(),
                             data=stats, lr=d2cfg.SOLVER.BASE_LR, max_iter=d2cfg.SOLVER.MAX_ITER,
                             steps=list(d2cfg.SOLVER.STEPS), warmup_iters=d2cfg.SOLVER.WARMUP_ITERS)
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            (Path(d2cfg.OUTPUT_DIR) / FAILED_LOG).unlink(missing_ok=True)
        else:
            trim_metrics(run_dir / "metrics.jsonl", start_iter)
        write_text_atomic(Path(d2cfg.OUTPUT_DIR) / "config.yaml", d2cfg.dump())
    logger.info("training data: %s", stats.summary())
    try:
        launch(_main, tcfg.num_gpus, num_machines=tcfg.num_machines, machine_rank=tcfg.machine_rank,
               dist_url=tcfg.dist_url, args=(tcfg, d2cfg, resume and stored is not None, meta))
    except FloatingPointError as e:  # detectron2 stops before a step could write NaN weights
        raise InputError(f"{e}; lower the learning rate (--lr) or check the data") from None
    if tcfg.machine_rank != 0:
        return None
    first, last = loss_range(run_dir / "metrics.jsonl")
    final = None
    if tcfg.val and (run_dir / "final_eval.json").is_file():
        final = {k: v for k, v in json.loads((run_dir / "final_eval.json").read_text()).items() if k in AP_KEYS}
    failed = {r["image_id"]: r["file_name"] for r in read_metrics(Path(d2cfg.OUTPUT_DIR) / FAILED_LOG)}
    return TrainSummary(run_dir, d2cfg.SOLVER.MAX_ITER, min(start_iter, d2cfg.SOLVER.MAX_ITER), first, last, stats,
                        failed, final, time.perf_counter() - t_start)
