"""How good a SAM engine is on held-out generated scenes, through the engine's own inference path.

* :func:`point_prompt_quality`: one click per object (the pixel farthest from the outline, as
  ``sap points --mode center``, or uniform over the mask), SAM's 3 multimask outputs upscaled to
  the image: mIoU of the best of the 3 (SAM's "oracle" figure), of the output SAM ranks first, and
  the Spearman correlation between predicted and true IoU over every output.
* :func:`write_scene_dataset`: held-out scenes as a COCO dataset (objects only, categories
  :data:`.scenes.KINDS`), for the command-line checks (``sap corrupt`` → ``sap refine``,
  ``sap pipeline``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pseudolabel.core.io import write_json_atomic
from pseudolabel.core.points import point_center, point_uniform
from pseudolabel.core.rle import encode_mask, rle_area, rle_to_bbox_xywh

from .scenes import Scene, coco_categories, make_scene


def scene_seed(seed: int, index: int, split: str = "train") -> int:
    """The seed of scene ``index`` of a split; ``train`` (the pocket SAM's), ``test`` (held out)
    and ``backbone`` (the pocket backbone's pretraining) never share a scene."""
    offset = {"train": 0, "test": 1, "backbone": 2}[split]
    return int(np.random.SeedSequence([seed, offset, index]).generate_state(1)[0])


def held_out_scenes(n: int, seed: int = 0) -> list[Scene]:
    """``n`` scenes of the test split (never drawn in training)."""
    return [make_scene(scene_seed(seed, i, "test")) for i in range(n)]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def point_prompt_quality(engine, scenes: list[Scene], click: str = "center", seed: int = 0,
                         min_area: int = 100) -> dict:
    """One click per object of every scene, decoded by ``engine`` (a ``SamEngine``).

    Args:
        engine: the SAM engine (fp32 or any precision it holds).
        scenes: the scenes.
        click: ``center`` (farthest from the outline) or ``uniform``.
        seed: for uniform clicks.
        min_area: objects with fewer visible pixels are skipped (clutter).

    Returns:
        ``miou_best3``, ``miou_top1`` (output with the highest predicted IoU), ``spearman``
        (predicted vs true IoU over all outputs), ``n`` objects, and the per-output arrays
        ``pred_iou`` and ``true_iou`` (``n×3``).
    """
    rng = np.random.default_rng(seed)
    pick = {"center": point_center, "uniform": point_uniform}[click]
    preds, trues = [], []
    for scene in scenes:
        objs = [m for m in scene.masks if m.sum() >= min_area]
        if not objs:
            continue
        emb = engine.encode(scene.image)
        pts = np.array([pick(m, rng) for m in objs], np.float64)[:, None]
        low, iou = engine.decode(emb, point_coords=pts, point_labels=np.ones((len(objs), 1)), multimask=True)
        masks = engine.upscale(low, emb).cpu().numpy()
        gt = np.stack(objs)[:, None]
        inter = (masks & gt).sum((2, 3))
        union = (masks | gt).sum((2, 3))
        trues.append(inter / np.maximum(union, 1))
        preds.append(iou.cpu().numpy())
    pred, true = np.concatenate(preds), np.concatenate(trues)
    top1 = true[np.arange(len(true)), pred.argmax(1)]
    return {"miou_best3": float(true.max(1).mean()), "miou_top1": float(top1.mean()),
            "spearman": _spearman(pred.ravel(), true.ravel()), "n": int(len(true)),
            "pred_iou": pred, "true_iou": true}


def write_scene_dataset(out_dir: str | Path, n_images: int, seed: int = 0, split: str = "test",
                        min_area: int = 100) -> tuple[Path, Path]:
    """Write ``images/*.png`` and ``annotations.json`` (COCO, RLE, one annotation per visible
    object of at least ``min_area`` px) under ``out_dir``; returns ``(json, images dir)``."""
    from PIL import Image

    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        scene = make_scene(scene_seed(seed, i, split))
        h, w = scene.image.shape[:2]
        name = f"scene_{i:04d}.png"
        Image.fromarray(scene.image).save(images_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for kind, m in zip(scene.kinds, scene.masks):
            if m.sum() < min_area:
                continue
            rle = encode_mask(m)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": kind + 1, "segmentation": rle,
                         "area": rle_area(rle), "bbox": rle_to_bbox_xywh(rle), "iscrowd": 0})
    coco = {"info": {"description": "sap pocket SAM scenes", "seed": seed, "split": split},
            "images": images, "categories": coco_categories(), "annotations": anns}
    return write_json_atomic(out_dir / "annotations.json", coco), images_dir
