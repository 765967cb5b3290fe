"""`sap refine --semantic`: refine PNG label maps through split-then-merge.

Each label map (one class index per pixel, PNG mode ``L``, ``P`` or 16-bit) is paired with the
image of the same file stem in the image folder. For every class present except the background
and the ignore label, split-then-merge (:data:`refine.stm.STM_RULES`, rule ``stm``) turns its
pixels into object-like regions; all regions of the image are refined together by SAMRefiner (one encoder pass;
on an image larger than the engine's frame by ``--windows``' rule, each region in the window around
its box, as the instance path: :mod:`refine.windowed`); the refined regions are painted back, a pixel claimed by regions of several classes going to the
region with the highest predicted IoU. Pixels no region claims become background, except
ignore-label pixels, which stay ignore. Palette PNGs keep their palette.

Label maps with labels outside ``0 .. num_classes−1`` (other than the ignore label), or that
are colour images, are skipped with one sentence each. Finished maps are skipped on a rerun
(each output PNG is written atomically).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pseudolabel.core.config import check_range, write_run_config
from pseudolabel.core.errors import ImageError, InputError
from pseudolabel.core.images import load_image_rgb
from pseudolabel.core.io import atomic_path, check_output_dir, write_json_atomic
from pseudolabel.core.progress import logger, logging_to_tqdm, progress

from pseudolabel.core.rle import decode_rle, encode_mask
from pseudolabel.core.tiled import open_large_image
from pseudolabel.core.windows import WindowRule, window_pixels, window_rule

from .refiner import RefineConfig, engine_for, refine_masks
from .stm import STM_RULES
from .windowed import WindowedImage, refine_windowed

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class SemanticConfig:
    """Settings of the semantic path (on top of :class:`~refine.refiner.RefineConfig`)."""

    stm_mu: float = 0.5
    min_region: int = 5
    background: int = 0
    ignore_label: int = 255
    num_classes: int | None = None


@dataclass
class SemanticSummary:
    maps: int = 0
    refined: int = 0
    skipped_existing: int = 0
    regions: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    wall_s: float = 0.0
    out: str = ""

    def lines(self) -> list[str]:
        return [f"{self.refined} of {self.maps} label maps refined ({self.regions} regions), "
                f"{self.skipped_existing} already done, {len(self.failed)} skipped, in {self.wall_s:.1f} s",
                *[f"skipped: {name}: {reason}" for name, reason in self.failed],
                f"written to: {self.out}"]


def read_label_map(path: Path, scfg: SemanticConfig) -> tuple[np.ndarray, Image.Image]:
    """``H×W`` int64 labels of a PNG and the opened image (for its palette).

    Raises:
        ImageError: unreadable, a colour image, or unknown labels.
    """
    try:
        with Image.open(path) as im:
            im.load()
            img = im.copy()
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"label map {path.name} cannot be read ({e})") from None
    if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise ImageError(f"label map {path.name} is a {img.mode} image; a label map holds one class "
                         f"index per pixel (PNG mode L, P or 16-bit)")
    labels = np.asarray(img, dtype=np.int64)
    if scfg.num_classes is not None:
        values = np.unique(labels)
        bad = [int(v) for v in values if (v < 0 or v >= scfg.num_classes) and v != scfg.ignore_label]
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
            raise ImageError(f"label map {path.name} holds label(s) {shown} outside 0..{scfg.num_classes - 1} "
                             f"and the ignore label {scfg.ignore_label}")
    return labels, img


def write_label_map(path: Path, labels: np.ndarray, like: Image.Image) -> None:
    """Write ``labels`` atomically as a PNG in the mode (and palette) of ``like``."""
    if like.mode == "P":
        out = Image.fromarray(labels.astype(np.uint8), mode="P")
        palette = like.getpalette()
        if palette:
            out.putpalette(palette)
    elif like.mode == "L":
        out = Image.fromarray(labels.astype(np.uint8), mode="L")
    else:
        out = Image.fromarray(labels.astype(np.uint16))
    with atomic_path(path) as tmp:
        out.save(tmp, format="PNG")


def refine_label_map(engine, emb, labels: np.ndarray, cfg: RefineConfig, scfg: SemanticConfig
                     ) -> tuple[np.ndarray, int]:
    """Refined ``H×W`` labels of one map and the number of regions refined.

    ``emb``: the image's embedding, or a :class:`~refine.windowed.WindowedImage` for an image
    refined in windows (each region in the window around its box, as the instance path; the
    regions are held as RLE meanwhile).
    """
    windowed = isinstance(emb, WindowedImage)
    regions, classes = [], []
    for c in np.unique(labels):
        if c in (scfg.background, scfg.ignore_label):
            continue
        for r in STM_RULES[cfg.rules.stm](labels == c, mu=scfg.stm_mu, min_size=scfg.min_region):
            regions.append(encode_mask(r) if windowed else r)
            classes.append(int(c))
    out = np.full(labels.shape, scfg.background, dtype=np.int64)
    out[labels == scfg.ignore_label] = scfg.ignore_label
    if not regions:
        return out, 0
    if windowed:
        rles, scores, _, _ = refine_windowed(engine, emb.encode, regions, emb.hw, emb.rule, cfg)
        masks = (decode_rle(r).astype(bool) for r in rles)
    else:
        result = refine_masks(engine, emb, np.stack(regions), cfg)
        masks, scores = result.masks, result.scores
    best = np.full(labels.shape, -np.inf)
    for mask, c, score in zip(masks, classes, scores):
        s = -1.0 if np.isnan(score) else float(score)
        claim = mask & (s > best)
        out[claim] = c
        best[claim] = s
    return out, len(regions)


def _image_index(images_dir: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for p in sorted(images_dir.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.stem not in index:
            index[p.stem] = p
    return index


def _embedding(engine, image_path: Path, map_path: Path, hw: tuple[int, int], rule: WindowRule):
    """The embedding of a label map's image, or a :class:`~refine.windowed.WindowedImage` when
    the window rule applies to its ``(H, W)`` (a huge tiled TIFF is then read by window).

    Raises:
        ImageError: unreadable, or its size is not the label map's.
    """
    if rule.applies(hw):
        try:
            pixels = open_large_image(image_path, hw[::-1])
        except ImageError as e:
            raise ImageError(f"label map {map_path.name}: {e}") from None
        pixels = pixels if pixels is not None else _image_of(image_path, map_path, hw)
        return WindowedImage(hw, rule, lambda win: engine.encode(np.ascontiguousarray(window_pixels(pixels, win))))
    return engine.encode(_image_of(image_path, map_path, hw))


def _image_of(image_path: Path, map_path: Path, hw: tuple[int, int]) -> np.ndarray:
    rgb = load_image_rgb(image_path)
    if rgb.shape[:2] != hw:
        raise ImageError(f"label map {map_path.name} is {hw[1]}×{hw[0]} but its image is {rgb.shape[1]}×{rgb.shape[0]}")
    return rgb


def refine_semantic(label_dir: str | os.PathLike, images_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    cfg: RefineConfig | None = None, scfg: SemanticConfig | None = None,
                    engine=None) -> SemanticSummary:
    """Refine every ``*.png`` label map of ``label_dir`` into ``out_dir`` (same file names).

    Raises:
        InputError: a folder is missing, or the label folder holds no PNG.
    """
    t0 = time.perf_counter()
    cfg = cfg or RefineConfig()
    scfg = scfg or SemanticConfig()
    label_dir, images_dir, out_dir = Path(label_dir), Path(images_dir), Path(out_dir)
    check_range(scfg.stm_mu, "--stm-mu", 0, 1)
    check_range(scfg.min_region, "min_region", 0, integer=True)
    if scfg.num_classes is not None:
        check_range(scfg.num_classes, "--num-classes", 1, integer=True)
    for d, what in ((label_dir, "label map folder"), (images_dir, "image folder")):
        if not d.is_dir():
            raise InputError(f"{what} {d} does not exist")
    maps = sorted(label_dir.glob("*.png"))
    if not maps:
        raise InputError(f"{label_dir} holds no .png label maps")
    check_output_dir(out_dir, "--out", inputs=(label_dir, images_dir, cfg.adapter, cfg.checkpoint))
    if engine is None:
        engine = engine_for(cfg)
    if cfg.adapter:
        from .lora import apply_adapter

        apply_adapter(engine, cfg.adapter)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(out_dir / "refine.config.yaml", "refine-semantic", cfg, semantic=scfg, sam=engine.info(),
                     inputs={"semantic": str(label_dir), "images": str(images_dir)})
    index = _image_index(images_dir)
    rule = window_rule(cfg.windows, engine.frame, cfg.window_scale)
    summary = SemanticSummary(maps=len(maps), out=str(out_dir))
    with logging_to_tqdm():
        for path in progress(maps, desc="refine", unit="map"):
            target = out_dir / path.name
            if target.exists():
                summary.skipped_existing += 1
                continue
            try:
                labels, like = read_label_map(path, scfg)
                if path.stem not in index:
                    raise ImageError(f"no image named {path.stem}.* in {images_dir}")
                refined, n = refine_label_map(engine, _embedding(engine, index[path.stem], path, labels.shape, rule),
                                              labels, cfg, scfg)
            except ImageError as e:
                summary.failed.append((path.name, str(e)))
                logger.warning("%s", e)
                continue
            write_label_map(target, refined, like)
            summary.refined += 1
            summary.regions += n
    summary.wall_s = time.perf_counter() - t0
    write_json_atomic(out_dir / "refine_summary.json",
                      {"maps": summary.maps, "refined": summary.refined, "regions": summary.regions,
                       "skipped_existing": summary.skipped_existing,
                       "failed": [{"map": n, "reason": r} for n, r in summary.failed]}, indent=2)
    return summary
