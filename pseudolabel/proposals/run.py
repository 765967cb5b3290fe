"""`sap proposals`: multi-mask proposals (SAM, SAM 2.1, HQ-SAM) for every annotated point, cached per image.

For each image of this process's shard: encode once (``encoder_batch`` images per encoder call),
decode all its points in chunks of ``points_per_batch`` for each configured prompt kind (3 masks +
3 predicted IoUs per prompt), upsample and RLE-encode chunk by chunk, and commit the image's
proposals in one transaction. With ``overlap`` (default) the next images are read on a background
thread and the masks RLE-encoded on another while the encoder runs (:mod:`.overlap`); the cache is
the same either way. Finished images are skipped on a rerun; failed images are recorded and retried.
"""

from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pseudolabel.core.cache import ShardWriter, check_shard_layout, points_digest, shard_filename
from pseudolabel.core.coco import load_coco_json
from pseudolabel.core.config import EngineOptions, write_run_config
from pseudolabel.core.errors import InputError
from pseudolabel.core.images import file_sha256, load_image_rgb
from pseudolabel.core.io import check_output_dir
from pseudolabel.core.lock import output_lock
from pseudolabel.core.points import PointAnn, collect_points
from pseudolabel.core.progress import logger, logging_to_tqdm, progress
from .prompt_kinds import PROMPT_KINDS, KindResult, mask_boxes_xyxy, parse_kinds
from pseudolabel.core.engines.base import (ImageEmbedding, PromptEngine, default_encoder_batch,
                                           default_prompt_batch, stability_score)
from .overlap import Prefetch, RleWorker

MASK_PIXEL_BUDGET = 2 ** 26  # full-resolution mask pixels held at once (one chunk)


@dataclass
class ProposalConfig(EngineOptions):
    """Options of `sap proposals` (defaults; a config file and flags override them): the engine's
    (:class:`~pseudolabel.core.config.EngineOptions`, fields first) and the stage's own."""

    prompts: str = "point"
    points_per_batch: int = 0  # 0: engines.base.default_prompt_batch (64 on a GPU, 4 on a CPU)
    save_embeddings: bool = False
    shard: str | None = None  # "i/n"; under torchrun RANK/WORLD_SIZE
    encoder_batch: int = 0  # images per encoder call; 0: engines.base.default_encoder_batch
    overlap: bool = True  # read images ahead and RLE-encode behind on background threads


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


@dataclass
class ChunkProposals:
    """One prompt kind's proposals for one chunk of points, RLEs possibly still being encoded."""

    points: list[PointAnn]
    kind_index: int
    kind: str
    rles: Future  # → list of B·C RLEs, point-major
    hw: tuple[int, int]
    iou: np.ndarray  # B×C
    stability: np.ndarray  # B×C
    boxes: np.ndarray  # B×C×4 XYXY
    areas: np.ndarray  # B×C

    def rows(self) -> list[tuple]:
        """``proposals`` table rows (waits for the RLEs)."""
        rles = self.rles.result()
        (h, w), c = self.hw, self.iou.shape[1]
        rows = []
        for b, p in enumerate(self.points):
            for r in range(c):
                x1, y1, x2, y2 = (float(v) for v in self.boxes[b, r])
                rows.append((p.ann_id, p.image_id, self.kind_index, self.kind, r, rles[b * c + r]["counts"], h, w,
                             float(self.iou[b, r]), float(self.stability[b, r]), x1, y1, x2 - x1, y2 - y1,
                             int(self.areas[b, r])))
        return rows


def decode_chunks(engine: PromptEngine, emb: ImageEmbedding, points: list[PointAnn], kinds: tuple[str, ...],
                  points_per_batch: int, rle: RleWorker) -> list[ChunkProposals]:
    """Decode one image's points; their masks go to ``rle`` chunk by chunk.

    Chunks of at most ``points_per_batch`` points (fewer on large images, so a chunk's
    full-resolution masks stay under :data:`MASK_PIXEL_BUDGET` pixels) go through the decoder
    once per prompt kind. The logits are upsampled transposed (``B×C×W×H``, the same sampling)
    so the masks are already in the column-major order COCO's RLE reads.
    """
    h, w = emb.original_size
    emb_t = dataclasses.replace(emb, input_size=emb.input_size[::-1], original_size=(w, h))
    chunk = max(1, min(points_per_batch, MASK_PIXEL_BUDGET // (3 * h * w)))
    out: list[ChunkProposals] = []
    for start in range(0, len(points), chunk):
        pts = points[start:start + chunk]
        xy = np.array([[p.x, p.y] for p in pts], dtype=np.float64)
        earlier: dict[str, KindResult] = {}
        for kind_index, kind in enumerate(kinds):
            args = PROMPT_KINDS[kind](xy, earlier, (h, w))
            low_res, iou = engine.decode(emb, multimask=True, **args)
            logits_t = engine.upscale(low_res.transpose(-1, -2), emb_t, threshold=None)  # B×C×W×H
            masks_t = logits_t > 0
            stab = stability_score(logits_t)
            del logits_t
            masks = masks_t.transpose(-1, -2)  # B×C×H×W view
            boxes = mask_boxes_xyxy(masks)
            earlier[kind] = KindResult(masks, iou, boxes)
            future = rle.submit(masks.flatten(0, 1).cpu().numpy())
            out.append(ChunkProposals(pts, kind_index, kind, future, (h, w), iou.cpu().numpy(),
                                      stab.cpu().numpy(), boxes.cpu().numpy(),
                                      masks_t.flatten(2).sum(-1).cpu().numpy()))
        del earlier
    return out


def image_proposals(engine: PromptEngine, emb: ImageEmbedding, points: list[PointAnn],
                    kinds: tuple[str, ...], points_per_batch: int) -> list[tuple]:
    """All proposals of one image's points, as ``proposals`` table rows (see :func:`decode_chunks`)."""
    with RleWorker(enabled=False) as rle:
        return [row for c in decode_chunks(engine, emb, points, kinds, points_per_batch, rle) for row in c.rows()]


@dataclass
class _Loaded:
    rgb: np.ndarray
    sha256: str


@dataclass
class _Pending:
    """An image decoded and waiting for its RLEs before its cache transaction."""

    img: dict
    loaded: _Loaded
    points: list[PointAnn]
    chunks: list[ChunkProposals]
    embedding: tuple | None
    encoder_s: float
    decoder_s: float


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
    batch = max(1, cfg.encoder_batch or default_encoder_batch(engine.device))
    cache_config = {**engine.info(), "prompt_kinds": list(kinds), "multimask": True,
                    "points_sha256": points_digest(p for ps in points_by_image.values() for p in ps),
                    "save_embeddings": bool(cfg.save_embeddings)}
    writer = ShardWriter(shard_path, cache_config, overwrite=overwrite)
    write_run_config(shard_path.with_suffix(".config.yaml"), "proposals", cfg,
                     resolved={"engine": engine.name, "precision": engine.precision, "device": str(engine.device),
                               "points_per_batch": ppb, "encoder_batch": batch,
                               "encoder_path": getattr(engine, "encoder_path", "plain"), "shard": [index, count]},
                     inputs={"ann": str(ann), "images": str(images_dir)})
    images = sorted(coco["images"], key=lambda im: im["id"])[index::count]
    summary = ProposalSummary(images=len(images), shard=(index, count), cache_file=str(shard_path))
    done = writer.done_images()
    todo = []
    for img in images:
        if img["id"] in done:
            path = images_dir / img["file_name"]
            if path.is_file() and file_sha256(path) == done[img["id"]]:
                summary.skipped += 1
                continue
            summary.changed.append(img["id"])  # its file changed since: computed again
            logger.warning("image %s (%s) changed since it was cached: computing it again",
                           img["id"], img["file_name"])
        todo.append(img)
    logger.info("%s (%s) on %s, %s; prompts %s; %d points per batch, %d images per encoder call%s",
                engine.name, engine.checkpoint_id[:12], engine.device, engine.precision,
                "+".join(kinds), ppb, batch, "" if cfg.overlap else ", no overlap")

    def read(img: dict) -> _Loaded:
        path = images_dir / img["file_name"]
        return _Loaded(load_image_rgb(path, (img["width"], img["height"])), file_sha256(path))

    def finish(p: _Pending) -> None:
        rows = [row for c in p.chunks for row in c.rows()]
        record = {"image_id": p.img["id"], "file_name": p.img["file_name"], "sha256": p.loaded.sha256,
                  "width": p.img["width"], "height": p.img["height"],
                  "encoder_s": p.encoder_s, "decoder_s": p.decoder_s}
        writer.write_image(record, p.points, rows, p.embedding)
        summary.done += 1
        summary.points += len(p.points)
        summary.proposals += len(rows)
        summary.encoder_s += p.encoder_s
        summary.decoder_s += p.decoder_s
        bar.update(1)
        bar.set_postfix(points=summary.points, refresh=False)

    reader = Prefetch(todo, read, depth=2 * batch if cfg.overlap else 0)
    rle = RleWorker(enabled=cfg.overlap)
    bar = progress(None, desc="proposals", total=len(images), unit="img")
    bar.update(summary.skipped)
    pending: _Pending | None = None
    try:
        with logging_to_tqdm():
            for group in _groups(iter(reader), batch):
                ready = []
                for img, loaded, error in group:
                    if error is not None:
                        writer.write_failure(img, str(error))
                        summary.failed.append((img["id"], str(error)))
                        logger.warning("image %s failed: %s", img["id"], error)
                        bar.update(1)
                    else:
                        ready.append((img, loaded, points_by_image.get(img["id"], [])))
                wanted = [r for r in ready if r[2] or cfg.save_embeddings]
                enc0 = engine.timings.encoder
                embs = dict(zip((r[0]["id"] for r in wanted),
                                engine.encode_batch([r[1].rgb for r in wanted]) if wanted else []))
                enc_s = (engine.timings.encoder - enc0) / max(len(wanted), 1)
                for img, loaded, pts in ready:
                    emb = embs.get(img["id"])
                    dec0 = engine.timings.decoder
                    chunks = decode_chunks(engine, emb, pts, kinds, ppb, rle) if emb is not None and pts else []
                    saved = None
                    if cfg.save_embeddings and emb is not None:
                        saved = ({k: v.cpu().numpy() for k, v in emb.tensors().items()},
                                 emb.input_size, emb.original_size)
                    current = _Pending(img, loaded, pts, chunks, saved, enc_s if emb is not None else 0.0,
                                       engine.timings.decoder - dec0)
                    if pending is not None:
                        finish(pending)
                    pending = current
                    if not cfg.overlap:
                        finish(pending)
                        pending = None
            if pending is not None:
                finish(pending)
    finally:
        rle.close()
        reader.close()
        bar.close()
        writer.close()
    summary.wall_s = time.perf_counter() - t_start
    return summary


def _groups(items, size: int):
    """Consecutive lists of ``size`` items (the last one shorter)."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


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
