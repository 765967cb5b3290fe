"""`sap demo`: the whole pipeline on a tiny example dataset it makes itself.

The dataset: coloured shapes with exact masks.

Each image shows 2–4 objects of three categories (disc, box, triangle) in random colours on a
textured background; later shapes occlude earlier ones, and the stored masks are the visible
parts. Objects sometimes carry a stripe of another colour, so that a click has a "part" and a
"whole" answer — the ambiguity SAM's multimask output and SAPNet's selection are about.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pseudolabel.core.errors import InputError
from pseudolabel.core.io import write_json_atomic
from pseudolabel.core.progress import logger
from pseudolabel.core.rle import encode_mask, rle_area, rle_to_bbox_xywh

from .config import PipelineConfig
from .pipeline import Pipeline, StageRecord
from .report import write_report

CATEGORIES = [{"id": 1, "name": "disc"}, {"id": 2, "name": "box"}, {"id": 3, "name": "triangle"}]


def _draw(shape: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    import cv2

    mask = np.zeros((h, w), np.uint8)
    size = int(rng.integers(min(h, w) // 7, min(h, w) // 3))
    cx, cy = int(rng.integers(size, w - size)), int(rng.integers(size, h - size))
    if shape == 1:
        cv2.circle(mask, (cx, cy), size, 1, -1)
    elif shape == 2:
        ax, ay = size, int(size * rng.uniform(0.5, 1.2))
        cv2.rectangle(mask, (cx - ax, cy - ay), (cx + ax, cy + ay), 1, -1)
    else:
        pts = np.array([[cx, cy - size], [cx - size, cy + size], [cx + size, cy + size]], np.int32)
        cv2.fillPoly(mask, [pts], 1)
    return mask.astype(bool)


def make_demo_dataset(out_dir: str | Path, n_images: int = 8, size: tuple[int, int] = (240, 320),
                      seed: int = 0) -> tuple[Path, Path]:
    """Write ``images/*.jpg`` and ``annotations.json`` (COCO, RLE masks) under ``out_dir``.

    Args:
        out_dir: destination folder.
        n_images: how many images.
        size: ``(height, width)`` of every image.
        seed: random seed (the dataset is a pure function of its arguments).

    Returns:
        ``(annotations_json, images_dir)``.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    images, anns = [], []
    for i in range(n_images):
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.uniform(60, 160, 3)
        img = base + 40 * np.sin(xx[..., None] / rng.uniform(8, 20)) * np.cos(yy[..., None] / rng.uniform(8, 20))
        img = img + rng.normal(0, 8, (h, w, 3))
        visible: list[tuple[int, np.ndarray]] = []
        for _ in range(int(rng.integers(2, 5))):
            cat = int(rng.integers(1, 4))
            m = _draw(cat, h, w, rng)
            colour = rng.uniform(0, 255, 3)
            img[m] = colour + rng.normal(0, 6, (int(m.sum()), 3))
            if rng.random() < 0.5:  # a stripe of another colour: a part inside the whole
                ys = np.flatnonzero(m.any(1))
                y0 = int(ys[len(ys) // 3])
                stripe = m.copy()
                stripe[: y0] = False
                stripe[y0 + max(2, len(ys) // 5):] = False
                img[stripe] = 255 - colour
            visible = [(c, v & ~m) for c, v in visible]
            visible.append((cat, m))
        file_name = f"demo_{i:03d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(images_dir / file_name, quality=95)
        images.append({"id": i + 1, "file_name": file_name, "width": w, "height": h})
        for cat, m in visible:
            if m.sum() < 30:
                continue
            rle = encode_mask(m)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "segmentation": rle,
                         "area": rle_area(rle), "bbox": rle_to_bbox_xywh(rle), "iscrowd": 0})
    gt = {"info": {"description": "sap demo shapes", "seed": seed}, "images": images,
          "categories": CATEGORIES, "annotations": anns}
    path = write_json_atomic(out_dir / "annotations.json", gt)
    return path, images_dir


# ---- the demo run ------------------------------------------------------------------------------

def _banner(*lines: str) -> str:
    width = max(map(len, lines)) + 4
    return "\n".join(["", "#" * width, *[f"# {ln:<{width - 4}} #" for ln in lines], "#" * width, ""])


RANDOM_BANNER = _banner(
    "SAM HAS RANDOM WEIGHTS IN THIS DEMO: no SAM checkpoint was found or could be downloaded.",
    "Every mask below is meaningless; the run only shows that the whole pipeline works.",
    "Real masks: sap demo --checkpoint sam_vit_b_01ec64.pth (or run once with internet).")

POCKET_BANNER = _banner(
    "THIS DEMO'S SAM IS NOT SAM: it is a pocket SAM trained on synthetic shapes",
    "(SAM's architecture at a small width, trained here by scripts/train_pocket_sam.py).",
    "Its masks are learnt, not random, but weak (docs/pocket.md); never for real photos.",
    "Official SAM: sap demo --checkpoint sam_vit_b_01ec64.pth (or run once with internet).")


#: the selector's rate per 32 images on the pocket backbone (docs/selector.md, "The pocket backbone")
POCKET_LR = 0.08
#: images the demo makes
DEMO_IMAGES = 16
#: the selector's schedule on them: 12 epochs of 16 images at batch 2 are 96 iterations, what it
#: needs to beat SAM's ranking on these bags (4 epochs of 8 images, 16 iterations, stayed below);
#: a warmup of 10 (SAPNet's 500 would outlast the run) and 50 NPG negatives an image instead of 500
#: (CPU time; the same picks within 0.003 here). docs/selector.md, "In sap demo".
DEMO_SELECT = {"method": "sapnet", "epochs": 12, "batch_size": 2, "min_size": 160, "max_size": 224,
               "warmup_iters": 10, "npg_num": 50, "workers": 0}


def demo_config(out: Path, data_json: Path, images: Path, engine: str, checkpoint: str,
                device: str | None, real: bool, quick: bool = False) -> PipelineConfig:
    """A pipeline small enough for a laptop CPU: shapes images, R18 selector and SOLOv2.

    ``real``: an official SAM checkpoint (then the backbones start from ImageNet ResNet-18
    weights too); otherwise both backbones are the pocket backbone (``resnet18_half`` with its
    bundled ``pocket`` weights, pretrained on generated scenes as the pocket SAM is trained on
    them), as nothing can be downloaded; the selector then learns at :data:`POCKET_LR`.
    ``quick`` (``sap demo --quick``, and the test of the demo) runs every stage through the same
    code with a token amount of work: one selector epoch, six SOLOv2 iterations on narrow heads.
    """
    backbone, weights = ("resnet18", "imagenet") if real else ("resnet18_half", "pocket")
    lr = {} if real else {"lr": POCKET_LR}
    cfg = PipelineConfig(
        images=str(images), out=str(out), gt=str(data_json), point_mode="center",
        sam={"engine": engine, "checkpoint": checkpoint, "precision": "auto"}, device=device,
        proposals={"prompts": "point,point_box", "save_embeddings": True},
        select={**DEMO_SELECT, "backbone": backbone, "backbone_weights": weights, **lr},
        refine={"enabled": True, "iters": 2},
        train={"backbone": backbone, "backbone_weights": weights, "iters": 60, "batch": 2,
               "min_size": "240", "max_size": 320, "warmup_iters": 10, "steps": [45], "workers": 0,
               "checkpoint_period": 30, "model": {"head_channels": 128, "head_convs": 2}},
        viz={"limit": 4, "sheet": 4},
    )
    if quick:
        cfg.select.update(epochs=1, min_size=160, max_size=224, warmup_iters=1)
        cfg.refine["iters"] = 1
        cfg.train.update(iters=6, min_size="160", max_size=224, warmup_iters=1, steps=[4], checkpoint_period=3,
                         model={"head_channels": 32, "head_convs": 1, "fpn_channels": 32, "mask_channels": 16,
                                "kernel_dim": 16})
    return cfg


def choose_sam(engine: str, checkpoint: str | None, offline: bool) -> tuple[str, str, str]:
    """Which SAM the demo runs: ``(engine, checkpoint, kind)``, kind ``official``, ``pocket`` or
    ``random``.

    ``checkpoint`` given: it wins (``none``: ``sam_tiny`` with random weights). Else the official
    checkpoint of ``engine`` from the checkpoint folder or a download (not with ``offline``); else
    the pocket SAM with its bundled weights; else ``sam_tiny`` with random weights.
    """
    from pseudolabel.core.engines.loading import (RANDOM_CHECKPOINT, bundled_checkpoint, checkpoint_dir,
                                                  download_checkpoint)
    from pseudolabel.core.engines.registry import canonical_engine, engine_spec

    engine = canonical_engine(engine)
    if checkpoint is not None:
        if str(checkpoint).lower() == RANDOM_CHECKPOINT:
            return "sam_tiny", RANDOM_CHECKPOINT, "random"
        return engine, str(checkpoint), "pocket" if engine_spec(engine).bundled else "official"
    if engine_spec(engine).bundled is None:
        local = checkpoint_dir() / (engine_spec(engine).filename or "")
        if local.is_file():
            return engine, str(local), "official"
        if not offline:
            try:
                return engine, str(download_checkpoint(engine)), "official"
            except InputError as e:
                logger.warning("%s", e)
    try:
        return "sam_pocket", str(bundled_checkpoint("sam_pocket")), "pocket"
    except InputError as e:
        logger.warning("%s", e)
    return "sam_tiny", RANDOM_CHECKPOINT, "random"


def run_demo(out: str | Path = "sap_runs/demo", checkpoint: str | None = None, engine: str = "sam_vit_b",
             device: str | None = None, offline: bool = False, n_images: int | None = None,
             quick: bool = False) -> tuple[list[StageRecord], Path]:
    """Make the shapes dataset and run the whole pipeline on it; returns the records and report path.

    SAM: see :func:`choose_sam` — a given checkpoint, else the official one, else the pocket SAM
    (trained on synthetic shapes, announced by a banner), else random weights (another banner).
    """
    out = Path(out)
    engine, checkpoint, kind = choose_sam(engine, checkpoint, offline)
    n_images = n_images or (4 if quick else DEMO_IMAGES)
    data_json, images = make_demo_dataset(out / "data", n_images=n_images)
    banner = {"official": None, "pocket": POCKET_BANNER, "random": RANDOM_BANNER}[kind]
    if banner:
        logger.warning(banner)
    cfg = demo_config(out / "run", data_json, images, engine, checkpoint, device, kind == "official", quick)
    records = Pipeline(cfg).run_stages()
    report = write_report(out / "run", records, banner=banner)
    if banner:
        logger.warning(banner)
    return records, report
