"""`sap select`: one pseudo-mask per annotated point, chosen among its SAM proposals.

Methods (a registry, name → function):

* ``sam-top1``: the proposal SAM itself rates highest (predicted IoU); no training.
* ``mil``: SAPNet's PSM alone (single-stage MIL), trained on the point labels.
* ``sapnet``: PSM + PDG, PNPG, PRM and BMS, the final mask picked by box IoU.

The output is COCO JSON with one annotation per point (same id, image and category), the mask
as compressed RLE, its box and area, a score and provenance under ``"sap"``; the other
proposals, ranked, go to the sidecar ``OUT.alternatives.jsonl`` that ``info.sap_alternatives``
names (:mod:`pseudolabel.core.alternatives`); the resolved options are written beside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pseudolabel.core import alternatives
from pseudolabel.core.bag_sources import BagStore, open_bag_store
from pseudolabel.core.backbones import RANDOM_SPECS
from pseudolabel.core.bags import Bag
from pseudolabel.core.coco import load_coco_json
from pseudolabel.core.config import check_range, sidecar_path, write_run_config
from pseudolabel.core.errors import InputError
from pseudolabel.core.io import atomic_path, check_output_dir, check_output_file
from pseudolabel.core.lock import output_lock
from pseudolabel.core.points import collect_points
from pseudolabel.core.progress import logger
from pseudolabel.core.rle import rle_area, rle_to_bbox_xywh
from .crops import crop_rule
from .mil import PointChoice
from .options import SelectConfig
from .reference import apply_reference


@dataclass
class SelectContext:
    """Everything a method needs: the points, the bags (read per image), images and options."""

    points: dict[str, Any]
    store: BagStore
    images_dir: Path | None
    cfg: SelectConfig
    categories: list[int]
    work_dir: Path


@dataclass
class MethodResult:
    """A method's choices by annotation id (None: SAM's top-1 of each bag, made when the
    output is written), images it could not read, and its statistics."""

    choices: dict[int, PointChoice] | None
    failed_images: dict[int, str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    is_main: bool = True


def has_scores(bag: Bag) -> bool:
    """Whether SAM's predicted IoU is known for at least one proposal of the bag."""
    return bool(len(bag)) and not bool(np.isnan(bag.scores).all())


def sam_top1_choice(bag: Bag) -> PointChoice:
    """The proposal with SAM's highest predicted IoU (first on ties; proposals without a score
    last); order by that score.

    The margin is SAM's best predicted IoU minus its second best (0 for a single proposal;
    a missing score counts as 0).

    Raises:
        InputError: the bag has no scores at all.
    """
    if not has_scores(bag):
        raise InputError(f"annotation {bag.ann_id} has no SAM scores ('score' or 'scores'), so SAM's top-1 "
                         "is undefined")
    order = [int(i) for i in np.argsort(-bag.scores, kind="stable")]  # NaN sorts last
    scores = np.nan_to_num(bag.scores[order], nan=0.0)
    margin = float(scores[0] - scores[1]) if len(order) > 1 else 0.0
    return PointChoice(bag.ann_id, order[0], float(bag.scores[order[0]]), order, margin=margin)


def choose_sam_top1(ctx: SelectContext) -> MethodResult:
    """``sam-top1``: no training, no images; the choice is made per bag as the output is written.

    Raises:
        InputError: some bag has no SAM scores (e.g. an official SAPNet file without ``scores``).
    """
    unscored = [b.ann_id for image_id in ctx.store.image_ids() for b in ctx.store.bags(image_id)
                if not has_scores(b)]
    if unscored:
        raise InputError(f"--method sam-top1 needs SAM's scores, but {len(unscored)} bags have none "
                         f"(first annotation {unscored[0]}; the file lacks 'score' and 'scores')")
    return MethodResult(None)


def choose_learned(ctx: SelectContext) -> MethodResult:
    """``mil`` and ``sapnet``: train the selector (or load ``cfg.weights``), then choose."""
    from pseudolabel.core.device import init_distributed, pick_device

    from .train import (CHECKPOINT_NAME, build_model, load_checkpoint, load_net_state, run_selector,
                        scratch_rate_advice, train_selector)

    cfg = ctx.cfg
    if ctx.images_dir is None:
        raise InputError(f"method {cfg.method} needs the images: pass --images DIR")
    if not ctx.images_dir.is_dir():
        raise InputError(f"the images folder {ctx.images_dir} does not exist")
    info = init_distributed()
    device = pick_device(cfg.device, info.local_rank, mps=False)
    cat_index = {c: i for i, c in enumerate(ctx.categories)}
    stats: dict[str, Any] = {}
    if cfg.weights:
        state = load_checkpoint(cfg.weights, ctx.categories, cfg)
        step = build_model(replace(cfg, backbone_weights="checkpoint"), len(ctx.categories),
                           state.get("backbone_norm", "auto"))
        load_net_state(step, state)
        stats["weights"] = str(cfg.weights)
    else:
        step = build_model(cfg, len(ctx.categories))
        if step.net.backbone_weights == "random" and str(cfg.backbone_weights).lower() not in RANDOM_SPECS:
            raise InputError(f"the selector's {cfg.backbone} has no ImageNet weights (the download failed), and "
                             "trained from random weights it picks close to chance on real photos: pass "
                             "--backbone-weights PATH (a torchvision ResNet state dict), or --backbone-weights "
                             "none to train from random weights anyway")
        if step.net.backbone_weights == "random" and (advice := scratch_rate_advice(cfg)):
            logger.warning(advice)
        train_set = selector_dataset(ctx, cat_index, training=True)
        ctx.store.close()  # each data-loading worker opens its own connection
        if len(train_set) == 0:
            raise InputError("no point has a proposal: nothing to train the selector on")
        stats.update(train_selector(step, train_set, cfg, ctx.categories, device, info, ctx.work_dir))
        stats["weights"] = str(ctx.work_dir / CHECKPOINT_NAME)
        if crop_rule(cfg.crops, cfg.min_size).mode != "off":  # a training sample is a tile (or a small image)
            stats["samples"] = "tiles"
    stats["backbone_weights"] = step.net.backbone_weights
    select_set = selector_dataset(ctx, cat_index, training=False)
    ctx.store.close()  # data-loading workers open their own connections; this process reopens when it writes
    choices, failed = run_selector(step, select_set, cfg, device, info)
    return MethodResult(choices, failed, stats, info.is_main)


def selector_dataset(ctx: SelectContext, cat_index: dict[int, int], training: bool):
    """The images and bags the selector trains on (``training``: flipped at ``cfg.flip``) or
    selects with: whole images, or with ``--crops`` large images as tiles (:mod:`.crops`)."""
    from .data import BagDataset, CropBagDataset

    cfg = ctx.cfg
    flip = cfg.flip if training else 0.0
    rule = crop_rule(cfg.crops, cfg.min_size)
    if rule.mode == "off":
        return BagDataset(ctx.points["images"], ctx.store, ctx.images_dir, cat_index, cfg.max_size, cfg.min_size,
                          flip, cfg.seed)
    return CropBagDataset(ctx.points["images"], ctx.store, ctx.images_dir, cat_index, cfg.max_size, cfg.min_size,
                          flip, cfg.seed, rule, training)


METHODS: dict[str, Callable[[SelectContext], MethodResult]] = {
    "sam-top1": choose_sam_top1,
    "mil": choose_learned,
    "sapnet": choose_learned,
}
MISSING_POLICIES = ("fallback", "skip")


def pseudo_annotation(bag: Bag, choice: PointChoice, method: str, fallback: bool = False,
                      mps: str = "official") -> dict[str, Any]:
    """The output annotation of one point: chosen mask, box, area, score, provenance, alternatives.

    ``alternatives`` are the other proposals, best first; ``sap.order`` ranks all of them and
    ``sap.mps`` names the rule by which `sap train` picks its MPS targets from that ranking
    (see :func:`pseudolabel.core.coco.mps_alternatives`).
    """
    i = choice.index
    rle = {"size": [int(v) for v in bag.rles[i]["size"]], "counts": bag.rles[i]["counts"]}
    sap = {"method": method, "prompt_kind": bag.kinds[i], "rank": int(bag.ranks[i]), "proposal_index": int(i),
           "order": [int(j) for j in choice.order], "mps": mps, "margin": round(float(choice.margin), 6)}
    if choice.stages:
        sap["stages"] = {k: int(v) for k, v in choice.stages.items()}
    if fallback:
        sap["fallback"] = True
    return {
        "id": bag.ann_id, "image_id": bag.image_id, "category_id": bag.category_id,
        "point": [float(bag.point[0]), float(bag.point[1])],
        "segmentation": rle, "bbox": rle_to_bbox_xywh(rle), "area": rle_area(rle),
        "score": round(float(choice.score), 6), "iscrowd": 0, "sap": sap,
        "alternatives": [bag.rles[j] for j in choice.order if j != i],
    }


@dataclass
class SelectSummary:
    """What `sap select` did."""

    points: int
    written: int
    no_proposals: list[int]
    fallback: list[int]
    skipped: list[int]
    failed_images: dict[int, str]
    changed_vs_sam_top1: float
    stats: dict[str, Any]
    out: Path | None
    config_path: Path | None

    def lines(self) -> list[str]:
        """A few lines for the terminal."""
        lines = [f"select: {self.written} pseudo-masks written for {self.points} points -> {self.out}",
                 f"  chosen differently from SAM's top-1: {100 * self.changed_vs_sam_top1:.1f}% of points"]
        if self.no_proposals:
            lines.append(f"  {len(self.no_proposals)} points have no proposals and were skipped "
                         f"(first ids: {self.no_proposals[:5]})")
        if self.fallback:
            lines.append(f"  {len(self.fallback)} points of unreadable images got SAM's top-1 (fallback)")
        if self.skipped:
            lines.append(f"  {len(self.skipped)} points of unreadable images were skipped")
        for image_id, reason in list(self.failed_images.items())[:10]:
            lines.append(f"  failed image {image_id}: {reason}")
        if "train_s" in self.stats:
            lines.append(f"  training: {self.stats['train_s']:.1f} s, "
                         f"{self.stats['s_per_image_epoch']:.3f} s per "
                         f"{'tile' if self.stats.get('samples') == 'tiles' else 'image'} per epoch")
        if "weights" in self.stats:
            lines.append(f"  selector weights: {self.stats['weights']}")
        return lines


def default_work_dir(out: str | os.PathLike) -> Path:
    """Checkpoints of the selector for ``OUT.json`` go to ``OUT.selector/``."""
    out = Path(out)
    return out.with_name(out.stem + ".selector")


def run_select(ann: str | os.PathLike, proposals: str | os.PathLike, out: str | os.PathLike,
               cfg: SelectConfig, images: str | os.PathLike | None = None) -> SelectSummary:
    """Check the options and the output path, then :func:`select_locked` holding ``OUT.lock``
    (rank 0 only under torchrun). Arguments as there."""
    check_select_options(cfg)
    check_output_file(out, "--out", inputs=(ann, proposals, images, cfg.weights, cfg.backbone_weights))
    check_output_dir(cfg.work_dir or f"{out}.selector", "--work-dir", inputs=(ann, proposals, images, cfg.backbone_weights))
    if int(os.environ.get("RANK", 0)) != 0:
        return select_locked(ann, proposals, out, cfg, images)
    with output_lock(out):
        return select_locked(ann, proposals, out, cfg, images)


def check_select_options(cfg: SelectConfig) -> None:
    """One sentence for the first unusable number among the options."""
    if cfg.method != "sam-top1" and not cfg.weights:
        check_range(cfg.epochs, "--epochs", 1, integer=True)
    check_range(cfg.batch_size, "--batch-size", 1, integer=True)
    check_range(cfg.lr, "lr", 0, low_open=True)
    check_range(cfg.warmup_iters, "--warmup-iters", 0, integer=True)
    check_range(cfg.min_size, "--min-size", 1, integer=True)
    check_range(cfg.max_size, "--max-size", 1, integer=True)
    if cfg.max_size < cfg.min_size:
        raise InputError(f"--max-size {cfg.max_size} is smaller than --min-size {cfg.min_size}: the long side "
                         f"limit must be at least the short side")
    check_range(cfg.workers, "--workers", 0, integer=True)
    crop_rule(cfg.crops, cfg.min_size)


def select_locked(ann: str | os.PathLike, proposals: str | os.PathLike, out: str | os.PathLike,
                  cfg: SelectConfig, images: str | os.PathLike | None = None) -> SelectSummary:
    """Choose a pseudo-mask for every point of ``ann`` and write them to ``out`` (COCO JSON).

    Args:
        ann: the point file (COCO JSON, ``point`` or ``point_coords`` per annotation).
        proposals: a `sap proposals` cache folder or a SAPNet-format JSON file.
        out: the output JSON; ``OUT.config.yaml`` is written beside it.
        cfg: the resolved options.
        images: the image folder (needed by ``mil`` and ``sapnet``).

    Raises:
        InputError: unusable point file or proposals, unknown method, mismatched weights.
    """
    if cfg.method not in METHODS:
        raise InputError(f"unknown selection method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    cfg = apply_reference(cfg)
    if cfg.missing not in MISSING_POLICIES:
        raise InputError(f"--missing must be one of {', '.join(MISSING_POLICIES)}, not {cfg.missing!r}")
    points = load_coco_json(ann)
    by_image, _ = collect_points(points, source=str(ann))
    if not Path(proposals).exists():
        raise InputError(f"the proposals {proposals} do not exist")
    if images is not None and Path(proposals).is_dir():
        from pseudolabel.core.cache import check_images_unchanged

        check_images_unchanged(proposals, images)
    store = open_bag_store(proposals, points)
    try:
        categories = sorted(int(c["id"]) for c in points["categories"])
        work_dir = Path(cfg.work_dir) if cfg.work_dir else default_work_dir(out)
        ctx = SelectContext(points, store, Path(images) if images is not None else None, cfg, categories, work_dir)
        try:
            result = METHODS[cfg.method](ctx)
        finally:
            _leave_process_group()
        summary = SelectSummary(sum(len(v) for v in by_image.values()), 0, [], [], [], result.failed_images, 0.0,
                                result.stats, None, None)
        if not result.is_main:
            return summary
        for image_id, reason in result.failed_images.items():
            logger.warning(f"image {image_id} could not be read: {reason}")
        summary.out = write_output(out, points, by_image, store, result, cfg, summary)
    finally:
        store.close()
    record = {k: v for k, v in summary.__dict__.items() if k not in ("out", "config_path")}
    summary.config_path = write_run_config(sidecar_path(out), "select", cfg, inputs={
        "ann": str(ann), "proposals": str(proposals), "images": str(images) if images else None},
        summary=record)
    return summary


def write_output(out: str | os.PathLike, points: dict[str, Any], by_image: dict, store: BagStore,
                 result: MethodResult, cfg: SelectConfig, summary: SelectSummary) -> Path:
    """Write the pseudo-label COCO JSON and its alternatives' sidecar atomically, one image's bags
    at a time.

    The file is the point file with its annotations replaced by one per point (in the point
    file's image order); ``summary`` gets the counts.
    """
    side = alternatives.sidecar_of(out)
    info = {**(points.get("info") if isinstance(points.get("info"), dict) else {}), alternatives.INFO_KEY: side.name}
    head = json.dumps({**{k: v for k, v in points.items() if k != "annotations"}, "info": info, "annotations": []})
    changed = compared = 0
    unscored: list[int] = []
    # the sidecar is renamed into place first (inner context), so the JSON never names a missing one
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f, \
            atomic_path(side) as side_tmp, open(side_tmp, "w", encoding="utf-8") as alts:
        f.write(head[:-2])  # ... "annotations": [
        sep = ""
        for image in points["images"]:
            pts = by_image.get(image["id"], [])
            if not pts:
                continue
            bag_of = {b.ann_id: b for b in store.bags(int(image["id"]))}
            for p in pts:
                bag = bag_of.get(p.ann_id)
                if bag is None or len(bag) == 0:
                    summary.no_proposals.append(p.ann_id)
                    continue
                top1 = sam_top1_choice(bag) if has_scores(bag) else None
                choice = top1 if result.choices is None else result.choices.get(p.ann_id)
                if choice is None:  # its image could not be read
                    if cfg.missing == "skip" or top1 is None:
                        summary.skipped.append(p.ann_id)
                        unscored += [] if cfg.missing == "skip" else [p.ann_id]
                        continue
                    summary.fallback.append(p.ann_id)
                    ann_out = pseudo_annotation(bag, top1, "sam-top1", True, cfg.rule_mps)
                else:
                    if top1 is not None:
                        changed += int(choice.index != top1.index)
                        compared += 1
                    ann_out = pseudo_annotation(bag, choice, cfg.method, mps=cfg.rule_mps)
                alternatives.write_line(alts, ann_out["id"], ann_out.pop("alternatives"))
                f.write(sep + json.dumps(ann_out))
                sep = ", "
                summary.written += 1
        f.write("]}")
        for stream in (alts, f):
            stream.flush()
            os.fsync(stream.fileno())
    if unscored:
        logger.warning(f"{len(unscored)} points of unreadable images have no SAM scores to fall back on "
                       f"and were skipped (first annotation {unscored[0]})")
    summary.changed_vs_sam_top1 = changed / max(compared, 1)
    return Path(out)


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
