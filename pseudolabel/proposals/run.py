"""`sap proposals`: multi-mask proposals (SAM, SAM 2.1, HQ-SAM) for every annotated point, cached per image.

For each image of this process's shard: encode once, decode all its points in chunks of
``points_per_batch`` for each configured prompt kind (3 masks + 3 predicted IoUs per prompt),
upsample and RLE-encode chunk by chunk, and commit the image's proposals in one transaction.
Finished images are skipped on a rerun; failed images are recorded and retried.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pseudolabel.core.cache import ShardWriter, check_shard_layout, points_digest, shard_filename
from pseudolabel.core.coco import load_coco_json
from pseudolabel.core.config import write_run_config
from pseudolabel.core.errors import ImageError, InputError
from pseudolabel.core.images import file_sha256, load_image_rgb
from pseudolabel.core.io import check_output_dir
from pseudolabel.core.lock import output_lock
from pseudolabel.core.points import PointAnn, collect_points
from pseudolabel.core.progress import logger, logging_to_tqdm, progress
from .prompt_kinds import PROMPT_KINDS, KindResult, mask_boxes_xyxy, parse_kinds
from pseudolabel.core.rle import encode_masks
from pseudolabel.core.engines.base import ImageEmbedding, PromptEngine, default_prompt_batch, stability_score
from pseudolabel.core.engines.registry import DEFAULT_ENGINE, engine_option

MASK_PIXEL_BUDGET = 2 ** 26  # full-resolution mask pixels held at once (one chunk)


@dataclass
class ProposalConfig:
    """Options of `sap proposals` (defaults; a config file and flags override them)."""

    engine: str | None = None  # a name of pseudolabel.core.engines.registry.ENGINES; None: sam_vit_h
    model: str | None = None  # deprecated: a SAM type (vit_b = engine sam_vit_b)
    checkpoint: str | None = None
    precision: str = "auto"
    device: str | None = None
    prompts: str = "point"
    points_per_batch: int = 0  # 0: engines.base.default_prompt_batch (64 on a GPU, 4 on a CPU)
    save_embeddings: bool = False
    shard: str | None = None  # "i/n"; under torchrun RANK/WORLD_SIZE

    def __post_init__(self) -> None:
        self.engine, self.model = engine_option(self.engine, self.model), None

    @property
    def engine_name(self) -> str:
        return self.engine or DEFAULT_ENGINE


@dataclass
class ProposalSummary:
    """What one run did."""

    images: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)  # cached images whose file changed: recomputed
    points: int = 0
    proposals: int = 0
    encoder_s: float = 0.0
    decoder_s: float = 0.0
    wall_s: float = 0.0
    shard: tuple[int, int] = (0, 1)
    cache_file: str = ""

    def lines(self) -> list[str]:
        n = max(self.done, 1)
        return [
            f"shard {self.shard[0]}/{self.shard[1]}: {self.images} images, {self.done} processed, "
            f"{self.skipped} already cached, {len(self.failed)} failed",
            f"{self.points} points → {self.proposals} proposals in {self.wall_s:.1f} s "
            f"({self.encoder_s / n:.2f} s/image encoder, {self.decoder_s / n:.2f} s/image decoder)",
            *([f"{len(self.changed)} cached images had changed on disk and were computed again "
               f"(first: image {self.changed[0]})"] if self.changed else []),
            *[f"failed: image {i}: {r}" for i, r in self.failed],
            f"cache: {self.cache_file}",
        ]


def resolve_shard(shard: str | None) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)``; without it, torchrun's ``RANK``/``WORLD_SIZE``, else ``(0, 1)``."""
    if shard:
        try:
            i, n = (int(v) for v in shard.split("/"))
        except ValueError:
            raise InputError(f"--shard must look like i/n (e.g. 0/4), got {shard!r}") from None
        if not (n >= 1 and 0 <= i < n):
            raise InputError(f"--shard {shard}: need 0 <= i < n")
        return i, n
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def image_proposals(engine: PromptEngine, emb: ImageEmbedding, points: list[PointAnn],
                    kinds: tuple[str, ...], points_per_batch: int) -> list[tuple]:
    """All proposals of one image's points, as ``proposals`` table rows.

    Chunks of at most ``points_per_batch`` points (fewer on large images, so a chunk's
    full-resolution masks stay under :data:`MASK_PIXEL_BUDGET` pixels) go through the decoder
    once per prompt kind; their masks are RLE-encoded before the next chunk.
    """
    h, w = emb.original_size
    chunk = max(1, min(points_per_batch, MASK_PIXEL_BUDGET // (3 * h * w)))
    rows: list[tuple] = []
    for start in range(0, len(points), chunk):
        pts = points[start:start + chunk]
        xy = np.array([[p.x, p.y] for p in pts], dtype=np.float64)
        earlier: dict[str, KindResult] = {}
        for kind_index, kind in enumerate(kinds):
            args = PROMPT_KINDS[kind](xy, earlier, (h, w))
            low_res, iou = engine.decode(emb, multimask=True, **args)
            logits = engine.upscale(low_res, emb, threshold=None)
            masks = logits > 0
            stab = stability_score(logits)
            boxes = mask_boxes_xyxy(masks)
            earlier[kind] = KindResult(masks, iou, boxes)
            del logits
            c = masks.shape[1]
            rles = encode_masks(masks.flatten(0, 1).cpu().numpy())
            areas = masks.flatten(2).sum(-1).cpu().numpy()
            iou_np, stab_np, box_np = iou.cpu().numpy(), stab.cpu().numpy(), boxes.cpu().numpy()
            for b, p in enumerate(pts):
                for r in range(c):
                    x1, y1, x2, y2 = (float(v) for v in box_np[b, r])
                    rows.append((p.ann_id, p.image_id, kind_index, kind, r, rles[b * c + r]["counts"], h, w,
                                 float(iou_np[b, r]), float(stab_np[b, r]), x1, y1, x2 - x1, y2 - y1,
                                 int(areas[b, r])))
        del earlier
    return rows


def run_proposals(ann: str | Path, images_dir: str | Path, out_dir: str | Path,
                  cfg: ProposalConfig | None = None, overwrite: bool = False,
                  engine: PromptEngine | None = None) -> ProposalSummary:
    """Run the stage for this process's shard; see the module docstring.

    Args:
        ann: COCO JSON with a point per annotation.
        images_dir: folder of the images (``file_name`` relative to it).
        out_dir: the cache folder (one ``shard-i-of-n.sqlite`` per shard).
        cfg: options.
        overwrite: replace a cache made with another configuration.
        engine: an existing engine (tests, benchmarks); else built from ``cfg``.

    Raises:
        InputError: unusable input or a configuration that disagrees with the existing cache.
    """
    t_start = time.perf_counter()
    cfg = cfg or ProposalConfig()
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise InputError(f"image folder {images_dir} does not exist")
    if not isinstance(cfg.points_per_batch, int) or cfg.points_per_batch < 0:
        raise InputError(f"--points-per-batch must be 0 (auto) or a positive number, not {cfg.points_per_batch}")
    coco = load_coco_json(ann)
    points_by_image, _ = collect_points(coco, source=str(ann))
    kinds = parse_kinds(cfg.prompts)
    index, count = resolve_shard(cfg.shard)
    check_output_dir(out_dir, "--out")
    check_shard_layout(out_dir, count, overwrite)
    shard_path = out_dir / shard_filename(index, count)
    with output_lock(shard_path):
        return _run_locked(coco, points_by_image, kinds, index, count, ann, images_dir, shard_path, cfg,
                           overwrite, engine, t_start)


def _run_locked(coco: dict, points_by_image: dict, kinds: tuple[str, ...], index: int, count: int,
                ann: str | Path, images_dir: Path, shard_path: Path, cfg: ProposalConfig, overwrite: bool,
                engine: PromptEngine | None, t_start: float) -> ProposalSummary:
    """The body of :func:`run_proposals`, run while holding the shard file's lock."""
    if engine is None:
        from pseudolabel.core.engines.loading import create_engine

        engine = create_engine(cfg.engine_name, cfg.checkpoint, cfg.device, cfg.precision)
    ppb = cfg.points_per_batch or default_prompt_batch(engine.device)
    cache_config = {**engine.info(), "prompt_kinds": list(kinds), "multimask": True,
                    "points_sha256": points_digest(p for ps in points_by_image.values() for p in ps),
                    "save_embeddings": bool(cfg.save_embeddings)}
    writer = ShardWriter(shard_path, cache_config, overwrite=overwrite)
    write_run_config(shard_path.with_suffix(".config.yaml"), "proposals", cfg,
                     resolved={"engine": engine.name, "precision": engine.precision, "device": str(engine.device),
                               "points_per_batch": ppb, "shard": [index, count]},
                     inputs={"ann": str(ann), "images": str(images_dir)})
    images = sorted(coco["images"], key=lambda im: im["id"])[index::count]
    summary = ProposalSummary(images=len(images), shard=(index, count), cache_file=str(shard_path))
    done = writer.done_images()
    logger.info("%s (%s) on %s, %s; prompts %s; %d points per batch",
                engine.name, engine.checkpoint_id[:12], engine.device, engine.precision,
                "+".join(kinds), ppb)
    try:
        with logging_to_tqdm():
            bar = progress(images, desc="proposals", unit="img")
            for img in bar:
                if img["id"] in done:
                    path = images_dir / img["file_name"]
                    if path.is_file() and file_sha256(path) == done[img["id"]]:
                        summary.skipped += 1
                        continue
                    summary.changed.append(img["id"])  # its file changed since: computed again
                    logger.warning("image %s (%s) changed since it was cached: computing it again",
                                   img["id"], img["file_name"])
                pts = points_by_image.get(img["id"], [])
                enc0, dec0 = engine.timings.encoder, engine.timings.decoder
                try:
                    path = images_dir / img["file_name"]
                    rgb = load_image_rgb(path, (img["width"], img["height"]))
                    sha = file_sha256(path)
                    rows: list[tuple] = []
                    emb = None
                    if pts or cfg.save_embeddings:
                        emb = engine.encode(rgb)
                        rows = image_proposals(engine, emb, pts, kinds, ppb)
                    saved = None
                    if cfg.save_embeddings and emb is not None:
                        saved = ({k: v.cpu().numpy() for k, v in emb.tensors().items()},
                                 emb.input_size, emb.original_size)
                    record = {"image_id": img["id"], "file_name": img["file_name"], "sha256": sha,
                              "width": img["width"], "height": img["height"],
                              "encoder_s": engine.timings.encoder - enc0,
                              "decoder_s": engine.timings.decoder - dec0}
                    writer.write_image(record, pts, rows, saved)
                except ImageError as e:
                    writer.write_failure(img, str(e))
                    summary.failed.append((img["id"], str(e)))
                    logger.warning("image %s failed: %s", img["id"], e)
                    continue
                summary.done += 1
                summary.points += len(pts)
                summary.proposals += len(rows)
                summary.encoder_s += engine.timings.encoder - enc0
                summary.decoder_s += engine.timings.decoder - dec0
                bar.set_postfix(points=summary.points, refresh=False)
    finally:
        writer.close()
    summary.wall_s = time.perf_counter() - t_start
    return summary


def cache_overview(cache_dir: str | Path) -> dict[str, Any]:
    """Counts of a cache folder: images done/failed, points, proposals, config."""
    from pseudolabel.core.cache import CacheReader

    with CacheReader(cache_dir) as reader:
        rows = reader.images()
        n_props = sum(r[0] for r in reader.query("SELECT count(*) FROM proposals"))
        return {"images_done": sum(r["status"] == "done" for r in rows),
                "images_failed": [(r["image_id"], r["reason"]) for r in rows if r["status"] == "failed"],
                "points": sum(r[0] for r in reader.query("SELECT count(*) FROM points")),
                "proposals": n_props, "config": reader.config}
