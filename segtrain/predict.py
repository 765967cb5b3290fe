"""Inference with a trained SOLOv2 → COCO results, and the ``sap predict`` entry point.

A COCO result is ``{"image_id", "category_id" (the dataset's original id), "segmentation"
(compressed RLE, counts as str), "score", "bbox" (XYWH of the mask, never zeros)}``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from pseudolabel.core.config import sidecar_path, write_run_config
from pseudolabel.core.errors import InputError
from pseudolabel.core.io import write_json_atomic
from pseudolabel.core.progress import logger, logging_to_tqdm, progress
from pseudolabel.core.rle import encode_masks, rle_to_bbox_xywh

from .data import CategoryMap, FailedSample, ImageRecord, InferenceDataset, collate, load_dataset
from .model import SOLOv2
from .postprocess import Prediction

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def prediction_to_results(pred: Prediction, image_id: int, categories: CategoryMap) -> list[dict[str, Any]]:
    """COCO results of one image (``bbox`` from each encoded mask)."""
    if len(pred) == 0:
        return []
    rles = encode_masks(pred.masks.cpu().numpy().astype("uint8"))
    scores = pred.scores.cpu().tolist()
    labels = pred.labels.cpu().tolist()
    return [{"image_id": image_id, "category_id": categories.ids[lab], "segmentation": rle,
             "score": round(float(s), 5), "bbox": rle_to_bbox_xywh(rle)}
            for rle, s, lab in zip(rles, scores, labels)]


def run_inference(model: SOLOv2, records: list[ImageRecord], categories: CategoryMap, *, min_size: int,
                  max_size: int, batch: int = 1, workers: int = 0, desc: str = "predict",
                  ) -> tuple[list[dict[str, Any]], list[FailedSample]]:
    """Predict every record; returns the COCO results and the images that could not be read."""
    loader = DataLoader(InferenceDataset(records, min_size, max_size), batch_size=batch, shuffle=False,
                        num_workers=workers, collate_fn=collate)
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    failed: list[FailedSample] = []
    try:
        with logging_to_tqdm():
            for items in progress(loader, desc=desc, total=len(loader), unit="batch"):
                good = [s for s in items if not isinstance(s, FailedSample)]
                for s in items:
                    if isinstance(s, FailedSample):
                        failed.append(s)
                        logger.warning("skipped image %s: %s", s.file_name, s.message)
                if not good:
                    continue
                preds = model.predict([s.image for s in good], [s.original_hw for s in good])
                for s, p in zip(good, preds):
                    results.extend(prediction_to_results(p, s.image_id, categories))
    finally:
        model.train(was_training)
    return results, failed


def image_records_from_folder(images_dir: Path) -> list[ImageRecord]:
    """Every image file of a folder (sorted by name), with ids 1..N; sizes are read on load."""
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{images_dir} holds no image file ({', '.join(IMAGE_SUFFIXES)})")
    return [ImageRecord(i + 1, p.name, p, 0, 0) for i, p in enumerate(files)]


@dataclass
class PredictSummary:
    images: int
    instances: int
    failed: list[FailedSample] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """One line for the terminal."""
        s = f"{self.images} images, {self.instances} instances in {self.seconds:.1f} s"
        if self.failed:
            s += f"; {len(self.failed)} images failed: " + ", ".join(f.file_name for f in self.failed[:10])
        return [s]


def predict(weights: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike, *,
            ann: str | os.PathLike | None = None, device: str | None = None, batch: int = 1, workers: int = 0,
            min_size: int | None = None, max_size: int | None = None, score_thr: float | None = None,
            skip_missing_images: bool = False) -> PredictSummary:
    """Run a checkpoint of ``sap train`` on a folder of images and write COCO results to ``out``.

    Args:
        weights: ``model_final.pth`` (or any checkpoint of the run, or the run folder).
        images: the image folder.
        ann: optional COCO file naming the images (its ``id``s become the results' ``image_id``);
            without it every image of the folder is used, with ids 1..N by sorted name (each
            result then also carries ``file_name``).
        min_size, max_size: test short side / long side cap (default: those of training).
        score_thr: override of the category score threshold (default 0.1); the threshold after
            matrix NMS (0.05) is lowered to it when it is smaller.
    """
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from pseudolabel.core.device import pick_device

    from pseudolabel.core.config import check_range
    from pseudolabel.core.io import check_output_file

    images = Path(images)
    if not images.is_dir():
        raise InputError(f"image folder {images} does not exist")
    check_range(batch, "--batch", 1, integer=True)
    check_range(workers, "--workers", 0, integer=True)
    for flag, v in (("--min-size", min_size), ("--max-size", max_size)):
        if v is not None:
            check_range(v, flag, 1, integer=True)
    if score_thr is not None:
        check_range(score_thr, "--score-thr", 0, 1)
    check_output_file(out, "--out", inputs=(ann, weights))
    dev = pick_device(device)
    ckpt = load_checkpoint(weights)
    model, cats = model_from_checkpoint(ckpt, dev)
    if score_thr is not None:  # both score thresholds: before matrix NMS, and (capped) after it
        model.cfg.inference.score_thr = score_thr
        model.cfg.inference.update_thr = min(model.cfg.inference.update_thr, score_thr)
    tcfg = ckpt.get("train_config", {})
    min_size = min_size or tcfg.get("test_size_resolved") or 800
    max_size = max_size or tcfg.get("max_size") or 1333
    if ann is not None:
        records, _, _ = load_dataset(ann, images, categories=cats, with_annotations=False,
                                     missing="skip" if skip_missing_images else "error")
        names = None
    else:
        records = image_records_from_folder(images)
        names = {r.image_id: r.file_name for r in records}
    t0 = time.perf_counter()
    results, failed = run_inference(model, records, cats, min_size=int(min_size), max_size=int(max_size),
                                    batch=batch, workers=workers)
    if names is not None:
        for r in results:
            r["file_name"] = names[r["image_id"]]
    write_json_atomic(out, results)
    write_run_config(sidecar_path(out), "predict",
                     {"weights": str(weights), "images": str(images), "ann": str(ann) if ann else None,
                      "min_size": min_size, "max_size": max_size, "score_thr": model.cfg.inference.score_thr,
                      "device": str(dev)},
                     failed=[{"image_id": f.image_id, "file_name": f.file_name, "error": f.message} for f in failed])
    return PredictSummary(len(records) - len(failed), len(results), failed, time.perf_counter() - t0)
