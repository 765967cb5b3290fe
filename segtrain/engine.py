"""The plain PyTorch training engine of ``sap train`` (``--engine torch``).

One process per device; several devices or machines through ``torchrun`` (the process group
is read from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``)::

    torchrun --nproc_per_node 8 $(which sap) train --train P.json --images DIR --out RUN --batch 16

``--batch`` is the total over all processes; the learning rate is ``base_lr · batch / 16``.
Each process's share runs as passes of ``images_per_pass`` images of one orientation, padded
together (see :mod:`segtrain.sampling` and :func:`train_step`). Rank 0 logs, evaluates and saves. The run folder holds ``config.yaml`` (resolved options and
versions), ``metrics.jsonl`` (training and evaluation lines), ``model_XXXXXXX.pth`` checkpoints,
``last_checkpoint``, ``model_final.pth`` and, with a validation set, ``final_eval.json`` and
``inference/val_predictions.json``. ``--resume`` continues from ``last_checkpoint`` exactly:
same weights, optimiser state, learning rate and data stream as an uninterrupted run.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from pseudolabel.core.config import to_jsonable, write_run_config
from pseudolabel.core.device import DistInfo, init_distributed, loader_workers, pick_device
from pseudolabel.core.errors import InputError
from pseudolabel.core.images import file_sha256
from pseudolabel.core.io import write_json_atomic
from pseudolabel.core.progress import logger, logging_to_tqdm, progress

from .checkpoint import last_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, TrainSummary, check_config, lr_schedule_of, model_config_of, per_pass_of
from .data import (CategoryMap, FailedSample, Sample, TrainDataset, check_same_categories, collate, load_dataset,
                   parse_min_sizes)
from .model import SOLOv2, SOLOv2Config, build_model, mean_losses
from .run_folder import MetricsWriter, other_engine_run, prune_checkpoints, refuse_unresumable, trim_metrics
from .sampling import ResumableBatchSampler, orientation, pass_slices
from .solver import make_optimizer, set_lr


def _barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


# ---- the loop --------------------------------------------------------------------------------

def train_step(model: SOLOv2, passes: list[list[Sample]], optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, *, clip_grad: float, use_amp: bool = False,
               net: torch.nn.Module | None = None) -> dict[str, float]:
    """One SGD step on a batch given as passes; returns the batch's losses (means over its passes).

    Each pass's loss, divided by the number of passes, is back-propagated as soon as it is
    computed (a batch of 16 holds the activations of one pass only); under DDP the gradients
    are synchronised on the last pass. Then all gradients together are clipped to the L2 norm
    ``clip_grad`` (0 = off) and the optimizer steps.

    Raises:
        FloatingPointError: the loss is not finite.
    """
    net = net or model
    ddp = isinstance(net, torch.nn.parallel.DistributedDataParallel)
    optimizer.zero_grad(set_to_none=True)
    records = []
    for k, samples in enumerate(passes):
        with net.no_sync() if ddp and k < len(passes) - 1 else nullcontext():
            batch, sizes = model.preprocess([s.image for s in samples])
            with torch.autocast(device_type=model.device.type, dtype=torch.float16, enabled=use_amp):
                losses = net(batch, sizes, [s.targets for s in samples])
            loss = losses["loss_cate"] + losses["loss_mask"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss.item()}")
            scaler.scale(loss / len(passes)).backward()
        records.append({"loss": loss.detach(), **{n: v.detach() for n, v in losses.items()}})
    if clip_grad > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    return {n: float(v) for n, v in mean_losses(records).items() if n != "num_pos"}


def evaluate(model: SOLOv2, val_json: str, records, categories: CategoryMap, cfg: TrainConfig,
             out_json: Path | None = None) -> tuple[dict[str, float], list[FailedSample]]:
    """COCO mask AP of ``model`` on the validation images (rank 0)."""
    from pseudolabel.core.cocoeval import coco_mask_ap

    from .predict import run_inference

    results, failed = run_inference(model, records, categories, min_size=cfg.test_size_resolved(),
                                    max_size=cfg.max_size, workers=loader_workers(min(cfg.workers, 2)), desc="eval")
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
    per_pass = per_pass_of(cfg, dist_info.world_size)
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
    other_engine_run(run_dir, "torch")
    ckpt_path = last_checkpoint(run_dir)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None and resume else None
    refuse_unresumable(run_dir, resume, ckpt_path, ckpt, cfg_record, train_sha)
    if resume and ckpt is None:
        logger.info("nothing to resume in %s: starting a new run", run_dir)

    torch.manual_seed(cfg.seed)
    if ckpt is not None:
        model = SOLOv2(SOLOv2Config.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    else:
        model = build_model(model_config_of(cfg, len(cats.ids)))
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
            trim_metrics(run_dir / "metrics.jsonl", start_iter)
    _barrier(dist_info)
    logger.info("training data: %s", stats.summary())

    net: torch.nn.Module = model
    if dist_info.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    dataset = TrainDataset(records, min_sizes, cfg.max_size, cfg.flip_prob,
                           alt_ranks=model.cfg.mps_ranks if model.cfg.mps_weight > 0 else ())
    sampler = ResumableBatchSampler(len(dataset), cfg.batch // dist_info.world_size, seed=cfg.seed,
                                    rank=dist_info.rank, world_size=dist_info.world_size, start_iter=start_iter,
                                    per_pass=per_pass, groups=[orientation(r.width, r.height) for r in records])
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=loader_workers(cfg.workers), collate_fn=collate,
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
    if start_iter < sched.max_iter:
        batches = iter(loader)
        bar = progress(range(start_iter, sched.max_iter), desc="train", total=sched.max_iter, unit="it",
                       disable=None if dist_info.is_main else True)
        bar.update(start_iter)
        with logging_to_tqdm():
            for it in bar:
                items = next(batches)
                for s in items:
                    if isinstance(s, FailedSample) and s.image_id not in failed:
                        failed[s.image_id] = s.file_name
                        logger.warning("skipped image %s: %s", s.file_name, s.message)
                # an unreadable image shortens its own pass; the others keep their grouping
                passes = [[s for s in items[part] if not isinstance(s, FailedSample)]
                          for part in pass_slices(len(items), per_pass)]
                passes = [p for p in passes if p]
                lr = sched(it)
                set_lr(optimizer, lr)
                if passes:
                    try:
                        values = train_step(model, passes, optimizer, scaler, clip_grad=cfg.clip_grad,
                                            use_amp=use_amp, net=net)
                    except FloatingPointError as e:  # stopped before a step could write NaN weights
                        raise InputError(f"{e} at iteration {it}; lower the learning rate (--lr) or check the "
                                         "data") from None
                    for k, v in values.items():
                        window.setdefault(k, []).append(v)
                    first_loss = values["loss"] if first_loss is None else first_loss
                    last_loss = values["loss"]
                    n_window += sum(map(len, passes)) * dist_info.world_size
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
                    prune_checkpoints(run_dir, cfg.keep_checkpoints)
                if cfg.eval_period and done % cfg.eval_period == 0 and done < sched.max_iter and val_records:
                    if dist_info.is_main:
                        ap, _ = evaluate(model, cfg.val, val_records, cats, cfg)
                        metrics.write({"iter": done, "type": "eval", **ap})
                        logger.info("iteration %d: val mask AP %.2f, AP50 %.2f", done, ap["AP"], ap["AP50"])
                    _barrier(dist_info)
        del batches
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
