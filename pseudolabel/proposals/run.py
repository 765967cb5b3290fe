"""`sap proposals`: multi-mask proposals (SAM, SAM 2.1, HQ-SAM) for every annotated point, cached per image.

For each image of this process's shard: encode once (``encoder_batch`` images per encoder call),
decode all its points in chunks of ``points_per_batch`` for each configured prompt kind (3 masks +
3 predicted IoUs per prompt), upsample and RLE-encode chunk by chunk, and commit the image's
proposals in one transaction. An image far larger than the engine's frame is cut into windows
that follow its points (``--windows``, :mod:`.windowed`), each encoded at its own resolution,
and its masks placed back at full size. With ``overlap`` (default) the next images are read on a background
thread and the masks RLE-encoded on another while the encoder runs (:mod:`.overlap`); the cache is
the same either way. Finished images are skipped on a rerun; failed images are recorded and retried.
"""

from __future__ import annotations

import functools
import os
import time
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
from pseudolabel.core.tiled import open_large_image
from pseudolabel.core.window_cache import write_window_embeddings
from .prompt_kinds import parse_kinds
from pseudolabel.core.engines.base import PromptEngine, default_encoder_batch, default_prompt_batch
from pseudolabel.core.windows import WindowRule, check_rule_fits, window_pixels, window_rule
from .decode import ChunkProposals, decode_chunks, image_proposals  # noqa: F401 (image_proposals: API)
from .overlap import Prefetch, RleWorker
from .windowed import plan_jobs


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
    windows: str = "auto"  # auto | off | a window side in pixels (pseudolabel.core.windows)
    window_scale: float = 1.0  # windows cut at this scale: side = (frame or PIXELS) / scale image px


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
    windows: int = 0  # windows encoded
    windowed_images: int = 0  # images cut into windows
    shard: tuple[int, int] = (0, 1)
    cache_file: str = ""

    def lines(self) -> list[str]:
        n = max(self.done, 1)
        return [
            f"shard {self.shard[0]}/{self.shard[1]}: {self.images} images, {self.done} processed, "
            f"{self.skipped} already cached, {len(self.failed)} failed",
            f"{self.points} points → {self.proposals} proposals in {self.wall_s:.1f} s "
            f"({self.encoder_s / n:.2f} s/image encoder, {self.decoder_s / n:.2f} s/image decoder)",
            *([f"{self.windowed_images} images cut into {self.windows} windows around their points"]
              if self.windows else []),
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
class _Loaded:
    rgb: Any  # H×W×3 uint8, or a window reader (core.windows.window_pixels)
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
    windows: int = 0
    window_embeddings: list = field(default_factory=list)  # (window, {name: array}, input (h, w))


@dataclass
class _Run:
    """What one run works with once its engine and cache are open (:func:`_open_run`)."""

    cfg: ProposalConfig
    engine: PromptEngine
    kinds: tuple[str, ...]
    rule: WindowRule
    points_per_batch: int
    encoder_batch: int
    images_dir: Path
    points_by_image: dict
    writer: ShardWriter
    summary: ProposalSummary
    bar: Any = None


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
    window_rule(cfg.windows, 1, cfg.window_scale)  # the values' form, before the engine loads
    index, count = resolve_shard(cfg.shard)
    check_output_dir(out_dir, "--out")
    check_shard_layout(out_dir, count, overwrite)
    shard_path = out_dir / shard_filename(index, count)
    with output_lock(shard_path):
        images = sorted(coco["images"], key=lambda im: im["id"])[index::count]
        run = _open_run(cfg, engine, kinds, points_by_image, images, images_dir, shard_path, overwrite,
                        {"ann": str(ann), "images": str(images_dir)})
        try:
            _propose(run, _resume(run, images))
        finally:
            run.writer.close()
    run.summary.wall_s = time.perf_counter() - t_start
    return run.summary


def _open_run(cfg: ProposalConfig, engine: PromptEngine | None, kinds: tuple[str, ...], points_by_image: dict,
              images: list[dict], images_dir: Path, shard_path: Path, overwrite: bool, inputs: dict) -> _Run:
    """The engine, the window rule, the shard's writer (which refuses another configuration) and
    the run's configuration file beside it."""
    if engine is None:
        from pseudolabel.core.engines.loading import create_engine

        engine = create_engine(cfg.engine_name, cfg.checkpoint, cfg.device, cfg.precision)
    rule = window_rule(cfg.windows, engine.frame, cfg.window_scale)
    check_rule_fits(rule, [(im["height"], im["width"]) for im in images])
    ppb = cfg.points_per_batch or default_prompt_batch(engine.device)
    batch = max(1, cfg.encoder_batch or default_encoder_batch(engine.device))
    cache_config = {**engine.info(), "prompt_kinds": list(kinds), "multimask": True,
                    "points_sha256": points_digest(p for ps in points_by_image.values() for p in ps),
                    "save_embeddings": bool(cfg.save_embeddings), **rule.record()}
    writer = ShardWriter(shard_path, cache_config, overwrite=overwrite)
    index, count = resolve_shard(cfg.shard)
    write_run_config(shard_path.with_suffix(".config.yaml"), "proposals", cfg,
                     resolved={"engine": engine.name, "precision": engine.precision, "device": str(engine.device),
                               "points_per_batch": ppb, "encoder_batch": batch,
                               "encoder_path": getattr(engine, "encoder_path", "plain"), "shard": [index, count],
                               **rule.record()},
                     inputs=inputs)
    summary = ProposalSummary(images=len(images), shard=(index, count), cache_file=str(shard_path))
    logger.info("%s (%s) on %s, %s; prompts %s; %d points per batch, %d images per encoder call%s; windows %s",
                engine.name, engine.checkpoint_id[:12], engine.device, engine.precision,
                "+".join(kinds), ppb, batch, "" if cfg.overlap else ", no overlap",
                "off" if rule.mode == "off" else f"{rule.mode} ({rule.side} px, halo {rule.halo})")
    return _Run(cfg, engine, kinds, rule, ppb, batch, images_dir, points_by_image, writer, summary)


def _resume(run: _Run, images: list[dict]) -> list[dict]:
    """The images still to do: those not cached, or cached from a file that changed since."""
    done = run.writer.done_images()
    todo = []
    for img in images:
        if img["id"] in done:
            path = run.images_dir / img["file_name"]
            if path.is_file() and file_sha256(path) == done[img["id"]]:
                run.summary.skipped += 1
                continue
            run.summary.changed.append(img["id"])  # its file changed since: computed again
            logger.warning("image %s (%s) changed since it was cached: computing it again",
                           img["id"], img["file_name"])
        todo.append(img)
    return todo


def _propose(run: _Run, todo: list[dict]) -> None:
    """Read, encode, decode and store ``todo``, ``encoder_batch`` inputs per encoder call."""
    cfg = run.cfg
    reader = Prefetch(todo, functools.partial(_read, run), depth=2 * run.encoder_batch if cfg.overlap else 0)
    rle = RleWorker(enabled=cfg.overlap)
    run.bar = progress(None, desc="proposals", total=run.summary.images, unit="img")
    run.bar.update(run.summary.skipped)
    pending: _Pending | None = None
    try:
        with logging_to_tqdm():
            for group in _groups(iter(reader), run.encoder_batch):
                for current in _propose_group(run, group, rle):
                    if pending is not None:
                        _store(run, pending)
                    pending = current
                    if not cfg.overlap:
                        _store(run, pending)
                        pending = None
            if pending is not None:
                _store(run, pending)
    finally:
        rle.close()
        reader.close()
        run.bar.close()


def _read(run: _Run, img: dict) -> _Loaded:
    """An image decoded once, whole, or a huge tiled TIFF opened for window reads; its sha256."""
    path = run.images_dir / img["file_name"]
    wh = (img["width"], img["height"])
    large = open_large_image(path, wh)
    return _Loaded(large if large is not None else load_image_rgb(path, wh), file_sha256(path))


def _propose_group(run: _Run, group: list, rle: RleWorker) -> list[_Pending]:
    """One group of read images → their proposals (failed reads recorded), in order."""
    cfg, engine = run.cfg, run.engine
    ready = []
    for img, loaded, error in group:
        if error is not None:
            run.writer.write_failure(img, str(error))
            run.summary.failed.append((img["id"], str(error)))
            logger.warning("image %s failed: %s", img["id"], error)
            run.bar.update(1)
        else:
            ready.append(_Pending(img, loaded, run.points_by_image.get(img["id"], []), [], None, 0.0, 0.0))
    jobs = [job for slot, p in enumerate(ready)
            for job in plan_jobs(slot, (p.img["height"], p.img["width"]), p.points, run.rule, cfg.save_embeddings)]
    for start in range(0, len(jobs), run.encoder_batch):
        batch = jobs[start:start + run.encoder_batch]
        enc0 = engine.timings.encoder
        embs = engine.encode_batch([window_pixels(ready[j.slot].loaded.rgb, j.window) for j in batch])
        enc_s = (engine.timings.encoder - enc0) / len(batch)
        for job, emb in zip(batch, embs):
            p = ready[job.slot]
            dec0 = engine.timings.decoder
            if job.points:
                p.chunks += decode_chunks(engine, emb, job.points, run.kinds, run.points_per_batch, rle,
                                          job.window, (p.img["height"], p.img["width"]))
            if cfg.save_embeddings:
                arrays = {k: v.cpu().numpy() for k, v in emb.tensors().items()}
                if job.window is None:
                    p.embedding = (arrays, emb.input_size, emb.original_size)
                else:
                    p.window_embeddings.append((job.window, arrays, emb.input_size))
            p.encoder_s += enc_s
            p.decoder_s += engine.timings.decoder - dec0
            p.windows += job.window is not None
    return ready


def _store(run: _Run, p: _Pending) -> None:
    """One image's cache transaction (waits for its RLEs) and its share of the summary."""
    rows = [row for c in p.chunks for row in c.rows()]
    record = {"image_id": p.img["id"], "file_name": p.img["file_name"], "sha256": p.loaded.sha256,
              "width": p.img["width"], "height": p.img["height"],
              "encoder_s": p.encoder_s, "decoder_s": p.decoder_s}
    extra = functools.partial(write_window_embeddings, image_id=p.img["id"], items=p.window_embeddings) \
        if p.window_embeddings else None
    run.writer.write_image(record, p.points, rows, p.embedding, extra=extra)
    if hasattr(p.loaded.rgb, "close"):  # a tiled TIFF's file
        p.loaded.rgb.close()
    s = run.summary
    s.done += 1
    s.points += len(p.points)
    s.proposals += len(rows)
    s.encoder_s += p.encoder_s
    s.decoder_s += p.decoder_s
    s.windows += p.windows
    s.windowed_images += p.windows > 0
    run.bar.update(1)
    run.bar.set_postfix(points=s.points, refresh=False)


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
