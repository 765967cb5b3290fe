"""The plain PyTorch training engine of ``sap train`` (``--engine torch``).

One process per device; several devices or machines through ``torchrun`` (the process group
is read from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``)::

    torchrun --nproc_per_node 8 $(which sap) train --train P.json --images DIR --out RUN --batch 16

``--batch`` is the total over all processes; the learning rate is ``base_lr · batch / 16``.
Rank 0 logs, evaluates and saves. The run folder holds ``config.yaml`` (resolved options and
versions), ``metrics.jsonl`` (training and evaluation lines), ``model_XXXXXXX.pth`` checkpoints,
``last_checkpoint``, ``model_final.pth`` and, with a validation set, ``final_eval.json`` and
``inference/val_predictions.json``. ``--resume`` continues from ``last_checkpoint`` exactly:
same weights, optimiser state, learning rate and data stream as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from pseudolabel.core.config import to_jsonable, write_run_config
from pseudolabel.core.device import DistInfo, init_distributed, pick_device
from pseudolabel.core.errors import InputError
from pseudolabel.core.images import file_sha256
from pseudolabel.core.journal import read_journal
from pseudolabel.core.io import write_json_atomic, write_text_atomic
from pseudolabel.core.progress import logger, logging_to_tqdm, progress

from .config import RESUME_FREE, TrainConfig, TrainSummary, check_config, lr_schedule_of
from .checkpoint import last_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .data import (CategoryMap, FailedSample, ResumableBatchSampler, TrainDataset,
                   check_same_categories, collate, load_dataset, parse_min_sizes)
from .losses import MPS_REDUCTIONS
from .model import SOLOv2, SOLOv2Config, build_model
from .solver import make_optimizer, set_lr

def _barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


# ---- run-folder bookkeeping ------------------------------------------------------------------

def _config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted((set(old) | set(new)) - RESUME_FREE)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _trim_metrics(path: Path, upto: int) -> None:
    """Drop metric lines written after iteration ``upto`` by an interrupted run (and a line torn
    by the kill)."""
    if not path.is_file():
        return
    kept = [rec for rec in read_journal(path) if isinstance(rec, dict) and rec.get("iter", 0) <= upto]
    write_text_atomic(path, "".join(json.dumps(rec) + "\n" for rec in kept))


def _prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest periodic checkpoints (``keep <= 0`` keeps all)."""
    if keep > 0:
        for old in sorted(run_dir.glob("model_[0-9]*.pth"))[:-keep]:
            old.unlink(missing_ok=True)


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (rank 0 only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


# ---- the loop --------------------------------------------------------------------------------

def _model_config(cfg: TrainConfig, num_classes: int) -> SOLOv2Config:
    if cfg.mps_reduce not in MPS_REDUCTIONS:
        raise InputError(f"mps_reduce must be one of {', '.join(MPS_REDUCTIONS)}")
    base = SOLOv2Config(num_classes=num_classes, backbone=cfg.backbone, backbone_weights=str(cfg.backbone_weights),
                        mps_weight=cfg.mps_weight, mps_reduce=cfg.mps_reduce)
    try:
        return SOLOv2Config.from_dict({**base.to_dict(), **cfg.model})
    except (ValueError, TypeError) as e:
        raise InputError(f"bad model option in the configuration: {e}") from None


def evaluate(model: SOLOv2, val_json: str, records, categories: CategoryMap, cfg: TrainConfig,
             out_json: Path | None = None) -> tuple[dict[str, float], list[FailedSample]]:
    """COCO mask AP of ``model`` on the validation images (rank 0)."""
    from pseudolabel.core.cocoeval import coco_mask_ap

    from .predict import run_inference

    results, failed = run_inference(model, records, categories, min_size=cfg.test_size_resolved(),
                                    max_size=cfg.max_size, workers=min(cfg.workers, 2), desc="eval")
    if out_json is not None:
        write_json_atomic(out_json, results)
    return coco_mask_ap(val_json, results), failed


def train_torch(cfg: TrainConfig, resume: bool = False) -> TrainSummary | None:
    """Train SOLOv2 with the torch engine; see the module docstring for the run folder.

    Returns the summary on rank 0 (``None`` on the other ranks).

    Raises:
        InputError: unusable inputs (missing images, category mismatch with the validation set,
            a run folder that already holds another run, a resume with a different configuration).
    """
    t_start = time.perf_counter()
    check_config(cfg)
    dist_info = init_distributed()
    if not dist_info.is_main:  # rank 0 speaks for the run
        logger.setLevel(logging.ERROR)
    device = pick_device(cfg.device, dist_info.local_rank, mps=False)
    if cfg.batch % dist_info.world_size:
        raise InputError(f"--batch {cfg.batch} is not divisible by the {dist_info.world_size} processes")
    min_sizes = parse_min_sizes(cfg.min_size)

    missing = "skip" if cfg.skip_missing_images else "error"
    records, cats, stats = load_dataset(cfg.train, cfg.images, missing=missing,
                                        keep_empty_images=cfg.keep_empty_images)
    val_records = None
    if cfg.val is not None:
        from pseudolabel.core.coco import load_coco_json

        check_same_categories(cats, CategoryMap.from_coco(load_coco_json(cfg.val)), Path(cfg.train).name,
                              Path(cfg.val).name)
        val_records, _, _ = load_dataset(cfg.val, cfg.val_images, categories=cats, with_annotations=False,
                                         missing=missing)
    train_sha = file_sha256(cfg.train)
    run_dir = Path(cfg.out)
    cfg_record = to_jsonable(cfg)
    ckpt_path = last_checkpoint(run_dir)
    ckpt = None
    if ckpt_path is not None and not resume:
        raise InputError(f"{run_dir} already holds a training run ({ckpt_path.name}); "
                         "pass --resume to continue it or choose another --out")
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        diffs = _config_differences(ckpt["train_config"], cfg_record)
        if ckpt.get("train_sha256") != train_sha:
            diffs.insert(0, "the training file's content")
        if diffs:
            raise InputError(f"cannot resume {run_dir}: it was started with a different configuration "
                             f"({'; '.join(diffs[:4])})")
    elif resume:
        logger.info("nothing to resume in %s: starting a new run", run_dir)

    torch.manual_seed(cfg.seed)
    if ckpt is not None:
        model = SOLOv2(SOLOv2Config.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    else:
        model = build_model(_model_config(cfg, len(cats.ids)))
    model.to(device)
    sched = lr_schedule_of(cfg)
    optimizer = make_optimizer(model, sched(0), cfg.momentum, cfg.weight_decay)
    use_amp = bool(cfg.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_iter = 0
    if ckpt is not None:
        start_iter = int(ckpt["iter"])
        if "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
    meta = {"model_config": model.cfg.to_dict(), "categories": cats.to_dict(),
            "train_config": {**cfg_record, "test_size_resolved": cfg.test_size_resolved()},
            "train_sha256": train_sha}

    metrics = MetricsWriter(run_dir / "metrics.jsonl" if dist_info.is_main else None)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if ckpt is None:
            write_run_config(run_dir / "config.yaml", "train", cfg, model=model.cfg, categories=cats.to_dict(),
                             data=stats, lr=sched.base_lr, max_iter=sched.max_iter, steps=sched.steps,
                             warmup_iters=sched.warmup_iters, world_size=dist_info.world_size, device=str(device))
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        else:
            _trim_metrics(run_dir / "metrics.jsonl", start_iter)
    _barrier(dist_info)
    logger.info("training data: %s", stats.summary())

    net: torch.nn.Module = model
    if dist_info.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    per_rank = cfg.batch // dist_info.world_size
    dataset = TrainDataset(records, min_sizes, cfg.max_size, cfg.flip_prob,
                           alt_ranks=model.cfg.mps_ranks if model.cfg.mps_weight > 0 else ())
    sampler = ResumableBatchSampler(len(dataset), per_rank, seed=cfg.seed, rank=dist_info.rank,
                                    world_size=dist_info.world_size, start_iter=start_iter)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate,
                        persistent_workers=False)

    def payload(it: int, full: bool) -> dict[str, Any]:
        p = {"iter": it, "model": model.state_dict(), **meta}
        if full:
            p.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), rng=rng_state())
        return p

    failed: dict[int, str] = {}
    first_loss = last_loss = None
    window: dict[str, list[float]] = {}
    t_window, n_window = time.perf_counter(), 0
    final_eval = None
    model.train()
    it = start_iter
    if start_iter < sched.max_iter:
        batches = iter(loader)
        bar = progress(range(start_iter, sched.max_iter), desc="train", total=sched.max_iter, unit="it",
                       disable=None if dist_info.is_main else True)
        bar.update(start_iter)
        with logging_to_tqdm():
            for it in bar:
                items = next(batches)
                good = []
                for s in items:
                    if isinstance(s, FailedSample):
                        if s.image_id not in failed:
                            failed[s.image_id] = s.file_name
                            logger.warning("skipped image %s: %s", s.file_name, s.message)
                    else:
                        good.append(s)
                lr = sched(it)
                set_lr(optimizer, lr)
                if good:
                    batch, sizes = model.preprocess([s.image for s in good])
                    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                        losses = net(batch, sizes, [s.targets for s in good])
                    loss = losses["loss_cate"] + losses["loss_mask"]
                    if not torch.isfinite(loss):  # stop before a step could write NaN weights
                        raise InputError(f"the loss became {loss.item()} at iteration {it}; "
                                         "lower the learning rate (--lr) or check the data")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if cfg.clip_grad and cfg.clip_grad > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    scaler.step(optimizer)
                    scaler.update()
                    values = {"loss": loss.item(),
                              **{k: float(v.detach()) for k, v in losses.items() if k != "num_pos"}}
                    for k, v in values.items():
                        window.setdefault(k, []).append(v)
                    first_loss = values["loss"] if first_loss is None else first_loss
                    last_loss = values["loss"]
                    n_window += len(good) * dist_info.world_size
                done = it + 1
                if done % cfg.log_period == 0 or done == sched.max_iter:
                    now = time.perf_counter()
                    rec = {"iter": done, "lr": lr, "img_per_s": round(n_window / max(now - t_window, 1e-9), 3),
                           **{k: round(sum(v) / len(v), 5) for k, v in window.items()}}
                    metrics.write(rec)
                    bar.set_postfix(loss=f"{rec.get('loss', float('nan')):.3f}", lr=f"{lr:.2e}",
                                    img_s=f"{rec['img_per_s']:.1f}")
                    window, t_window, n_window = {}, now, 0
                if dist_info.is_main and cfg.checkpoint_period and done % cfg.checkpoint_period == 0 \
                        and done < sched.max_iter:
                    save_checkpoint(run_dir / f"model_{done:07d}.pth", payload(done, True), run_dir)
                    _prune_checkpoints(run_dir, cfg.keep_checkpoints)
                if cfg.eval_period and done % cfg.eval_period == 0 and done < sched.max_iter and val_records:
                    if dist_info.is_main:
                        ap, _ = evaluate(model, cfg.val, val_records, cats, cfg)
                        metrics.write({"iter": done, "type": "eval", **ap})
                        logger.info("iteration %d: val mask AP %.2f, AP50 %.2f", done, ap["AP"], ap["AP50"])
                    _barrier(dist_info)
        del batches
        it = sched.max_iter
    if dist_info.is_main:
        save_checkpoint(run_dir / "model_final.pth", payload(sched.max_iter, False), run_dir)
        if val_records:
            final_eval, _ = evaluate(model, cfg.val, val_records, cats, cfg,
                                     out_json=run_dir / "inference" / "val_predictions.json")
            write_json_atomic(run_dir / "final_eval.json", {"iter": sched.max_iter, **final_eval}, indent=2)
            metrics.write({"iter": sched.max_iter, "type": "eval", **final_eval})
    _barrier(dist_info)
    if not dist_info.is_main:
        return None
    return TrainSummary(run_dir, sched.max_iter, start_iter, first_loss, last_loss, stats, failed, final_eval,
                        time.perf_counter() - t_start)
