"""`sap refine` on a COCO JSON: refine every instance mask, keep everything else.

Each annotation with a usable mask gets a refined ``segmentation`` (compressed RLE), ``bbox`` and
``area`` and a ``refine_iou`` field (SAM's predicted IoU of the kept mask; absent where the
coarse mask was kept); every other field and every annotation id is kept. Annotations without a
mask, locked annotations (a person's correction, see :func:`pseudolabel.core.coco.is_locked`),
and those whose mask cannot be used (size disagreeing with the image, polygon with fewer
than 3 points, empty), pass through unchanged and are counted; a malformed segmentation (garbage
RLE counts, a non-numeric polygon) stops the run with one sentence naming the annotation. Images
that fail (missing, unreadable, wrong size, or an image entry whose size none of its masks has)
keep their annotations unchanged, are listed in the output's ``info``, and the run goes on.

Resume: after each image its refined annotations are appended to ``OUT.partial.jsonl`` (beside
the output, one JSON line per image with its file's sha256, headed by a digest of the input, the
settings and the SAM weights by content); a rerun with the same digest skips the images found
there, except those whose file changed since (refined again and reported). A line torn by a kill
is cut off. ``OUT.lock`` keeps a second run off the same output. The output itself is written
once, atomically, at the end; the partial file is then removed, unless some images failed (a
rerun then retries only those).

Prompts: with ``dump_prompts`` each image's record in the partial file also holds the prompts
handed to SAM, and at the end they are written (atomically, in input order) as JSON Lines, one
line per annotation per iteration::

    {"id": 7, "iteration": 0, "pos": [[x, y]], "neg": [[x, y]], "box": [x0, y0, x1, y1], "cebox": null}

``iteration`` is 0-based; coordinates are original-image pixels exactly as handed to SAM's
predictor (integer pixel indices; boxes with inclusive max); ``box`` is null when the box prompt
is off, ``cebox`` is CEBox's box when CEBox ran (then equal to ``box``), else null; ``neg`` is
empty when the negative point is off or omitted. The format is stable: it is how `sap viz
prompts` draws them and how the prompts are compared with the official code from outside.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pseudolabel.core.alternatives import rebase
from pseudolabel.core.coco import annotation_rle, annotations_by_image, check_categories, is_locked, load_coco_json
from pseudolabel.core.config import sidecar_path, write_run_config
from pseudolabel.core.errors import ImageError, InputError
from pseudolabel.core.images import file_sha256
from pseudolabel.core.io import atomic_path, check_output_file, disk_full_names, write_json_stream
from pseudolabel.core.journal import append_record, read_journal
from pseudolabel.core.lock import output_lock
from pseudolabel.core.progress import logger, logging_to_tqdm, progress
from pseudolabel.core.rle import decode_rle, encode_masks, rle_area, rle_to_bbox_xywh
from pseudolabel.core.windows import window_rule

from .inputs import BAD_MASK_REASONS, EmbeddingSource, classify_segmentation
from .lora import apply_adapter
from .refiner import RefineConfig, engine_for, refine_masks
from .windowed import WindowedImage, refine_windowed

@dataclass
class Refined:
    """What is refined so far: the images whose journal record holds (resumed or new) and their masks."""

    images: set = field(default_factory=set)
    masks: int = 0


@dataclass
class RefineSummary:
    """What one `sap refine` run did."""

    images: int = 0
    refined_images: int = 0
    resumed_images: int = 0
    failed: list[tuple[Any, str]] = field(default_factory=list)
    changed: list = field(default_factory=list)  # journaled images whose file changed: redone
    refined: int = 0
    kept_coarse: int = 0
    without_mask: int = 0
    locked: int = 0
    bad: dict[str, list] = field(default_factory=dict)  # reason → annotation ids
    from_cache: int = 0
    encoded: int = 0
    wall_s: float = 0.0
    out: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "refined_images": self.refined_images,
                "resumed_images": self.resumed_images, "changed_images": list(self.changed),
                "failed_images": [{"image_id": i, "reason": r} for i, r in self.failed],
                "refined_annotations": self.refined, "kept_coarse": self.kept_coarse,
                "passed_through_without_mask": self.without_mask,
                "passed_through_locked": self.locked,
                "skipped_bad_masks": {k: len(v) for k, v in self.bad.items()},
                "embeddings_from_cache": self.from_cache, "embeddings_encoded": self.encoded,
                "wall_s": round(self.wall_s, 2)}

    def lines(self) -> list[str]:
        out = [f"{self.refined} masks refined on {self.refined_images + self.resumed_images} of "
               f"{self.images} images ({self.resumed_images} resumed) in {self.wall_s:.1f} s",
               f"embeddings: {self.from_cache} from the cache, {self.encoded} encoded"]
        if self.changed:
            out.append(f"{len(self.changed)} images changed since the interrupted run and were refined "
                       f"again (first: image {self.changed[0]})")
        if self.without_mask:
            out.append(f"{self.without_mask} annotations without a mask passed through unchanged")
        if self.locked:
            out.append(f"{self.locked} locked annotations (corrections) passed through untouched")
        for reason, ids in self.bad.items():
            out.append(f"{len(ids)} annotations {BAD_MASK_REASONS[reason]} passed through unchanged "
                       f"(first: id {ids[0]})")
        if self.kept_coarse:
            out.append(f"{self.kept_coarse} coarse masks kept because SAM returned an empty mask")
        out += [f"failed: image {i}: {r}" for i, r in self.failed]
        out.append(f"written: {self.out}")
        return out


def _settings_digest(coco_sha: str, cfg: RefineConfig, sam: dict | None = None) -> str:
    """Digest of what shapes the refined masks: the input file's content, the settings, and the
    SAM weights by content (``engine.info()``: checkpoint sha256; the adapter file's sha256)."""
    sam = dict(sam or {})
    if cfg.adapter and Path(cfg.adapter).is_file():
        sam["adapter_sha256"] = file_sha256(cfg.adapter)
    blob = json.dumps({"input": coco_sha, "settings": cfg.result_settings(), "sam": sam}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.jsonl")


def _read_partial(path: Path, digest: str) -> dict[Any, dict]:
    """Per-image records (``annotations``, ``kept``, ``sha256``) from a matching partial file
    ({} if absent or stale). A line torn by a kill ends the records and is cut off the file."""
    records = read_journal(path, repair=True)
    if not records:
        return {}
    if not isinstance(records[0], dict) or records[0].get("digest") != digest:
        logger.info("%s was made from another input, settings or SAM checkpoint: starting over", path.name)
        return {}
    return {rec["image_id"]: rec for rec in records[1:] if isinstance(rec, dict) and "image_id" in rec}


def refine_image(engine, emb, items: list[tuple[dict, dict]], cfg: RefineConfig,
                 prompts: list | None = None) -> tuple[list[dict], int]:
    """Refined copies of one image's annotations.

    Args:
        emb: the image's embedding, or a :class:`~refine.windowed.WindowedImage` for an image
            refined in windows.
        items: ``(annotation, coarse RLE)`` pairs of the image.
        prompts: if a list, the ``--dump-prompts`` lines of the image are appended to it.

    Returns:
        ``(annotations, kept_coarse)``.
    """
    record = prompts is not None
    if isinstance(emb, WindowedImage):
        rles, scores, kept_coarse, recs = refine_windowed(engine, emb.encode, [r for _, r in items], emb.hw,
                                                          emb.rule, cfg, record, emb.stored)
    else:
        masks = np.stack([decode_rle(rle) for _, rle in items]).astype(bool)
        result = refine_masks(engine, emb, masks, cfg, record=record)
        rles, scores, kept_coarse, recs = encode_masks(result.masks), result.scores, result.kept_coarse, result.prompts
    if record:
        for (ann, _), per_iter in zip(items, recs):
            prompts.extend({"id": ann["id"], "iteration": k, **rec} for k, rec in enumerate(per_iter))
    out = []
    for (ann, _), rle, score, kept in zip(items, rles, scores, kept_coarse):
        new = copy.deepcopy(ann)
        new["segmentation"] = rle
        new["bbox"] = rle_to_bbox_xywh(rle)
        new["area"] = float(rle_area(rle))
        if not kept:
            new["refine_iou"] = round(float(score), 5)
        out.append(new)
    return out, int(np.sum(kept_coarse))


def _write_dump(part: Path, dump: Path, order: list) -> None:
    """Write the prompts of the images in ``order`` from the partial file to ``dump`` (JSONL),
    reading one image record at a time (the last record of an image wins)."""
    with open(part, "rb") as f:
        offsets = journal_offsets(f)
        with atomic_path(dump) as tmp, open(tmp, "w", encoding="utf-8") as out:
            for img_id in order:
                if img_id not in offsets:
                    continue
                f.seek(offsets[img_id])
                for rec in json.loads(f.readline()).get("prompts", []):
                    out.write(json.dumps(rec) + "\n")


def journal_offsets(f) -> dict[Any, int]:
    """Image id → where its last record starts in the open partial file ``f`` (binary)."""
    offsets: dict[Any, int] = {}
    f.seek(0)
    f.readline()
    while True:
        pos = f.tell()
        line = f.readline()
        if not line:
            break
        try:
            offsets[json.loads(line)["image_id"]] = pos
        except (json.JSONDecodeError, KeyError):
            break
    return offsets


def _refined_annotations(anns: list[dict], journal, offsets: dict[Any, int]):
    """Each annotation, or its refined copy from the journal (one image's record held at a time)."""
    image, by_id = None, {}
    for a in anns:
        if a.get("image_id") in offsets and a.get("image_id") != image:
            image = a["image_id"]
            journal.seek(offsets[image])
            by_id = {r["id"]: r for r in json.loads(journal.readline())["annotations"]}
        yield by_id.get(a["id"], a) if a.get("image_id") == image else a


def run_refine(ann: str | os.PathLike, images_dir: str | os.PathLike, out: str | os.PathLike,
                cfg: RefineConfig | None = None, engine=None, resume: bool = True,
                dump_prompts: str | os.PathLike | None = None) -> RefineSummary:
    """Refine every mask of a COCO JSON file and write the result (see the module docstring).

    Args:
        ann: COCO JSON with masks (RLE or polygons).
        images_dir: folder of the images (``file_name`` relative to it).
        out: output COCO JSON.
        cfg: settings (model, prompts, ...).
        engine: an existing :class:`pseudolabel.core.engines.base.PromptEngine` (else built from ``cfg``).
        resume: use ``OUT.partial.jsonl`` from an interrupted run with the same input and settings.
        dump_prompts: also write the prompts of every iteration there (see the module docstring).

    Raises:
        InputError: unusable input file, image folder, cache or adapter.
    """
    t0 = time.perf_counter()
    cfg = cfg or RefineConfig()
    ann, images_dir, out = Path(ann), Path(images_dir), Path(out)
    if not images_dir.is_dir():
        raise InputError(f"image folder {images_dir} does not exist")
    check_output_file(out, "--out", inputs=(ann, images_dir, cfg.embeddings, cfg.adapter, cfg.checkpoint,
                                            dump_prompts))
    coco = load_coco_json(ann)
    check_categories(coco, str(ann))
    with output_lock(out):
        return _refine_locked(coco, ann, images_dir, out, cfg, engine, resume, dump_prompts, t0)


def _refine_locked(coco: dict, ann: Path, images_dir: Path, out: Path, cfg: RefineConfig, engine,
                   resume: bool, dump_prompts: str | os.PathLike | None, t0: float) -> RefineSummary:
    """The body of :func:`run_refine`, run while holding the output's lock."""
    summary = RefineSummary(images=len(coco["images"]), out=str(out))
    images = {img["id"]: img for img in coco["images"]}
    work = _plan_work(coco, images, ann, summary)
    if engine is None:  # after the input checks: a bad file costs no model loading
        engine = engine_for(cfg)
    if cfg.adapter:
        apply_adapter(engine, cfg.adapter)
    rule = window_rule(cfg.windows, engine.frame, cfg.window_scale)
    source = EmbeddingSource(engine, cfg.embeddings, cfg.rules.fp16_embeddings, rule)
    part = partial_path(out)
    digest = _settings_digest(file_sha256(ann), cfg, engine.info())
    done = _resumable(part, digest, images, images_dir, summary, resume, dump_prompts is not None)
    out.parent.mkdir(parents=True, exist_ok=True)
    refined = Refined(images=set(done), masks=sum(len(rec["annotations"]) for rec in done.values()))
    for rec in done.values():
        summary.kept_coarse += int(rec.get("kept", 0))
    summary.resumed_images = sum(1 for i in work if i in done)
    logger.info("%s (%s) on %s; prompts %s; %d iterations", engine.name,
                engine.checkpoint_id[:12], engine.device, "+".join(cfg.prompts), cfg.iters)
    try:
        _refine_images(part, digest, done, work, images, images_dir, engine, source, cfg, refined, summary,
                       dump_prompts is not None)
    finally:
        source.close()
    summary.refined = refined.masks
    summary.from_cache, summary.encoded = source.from_cache, source.encoded
    summary.wall_s = time.perf_counter() - t0
    _write_outputs(coco, ann, images_dir, out, cfg, engine, refined, summary, part, dump_prompts, list(work))
    return summary


def _plan_work(coco: dict, images: dict, ann: Path, summary: RefineSummary) -> dict[Any, list[tuple[dict, dict]]]:
    """Which annotations are refined, image by image (``(annotation, coarse RLE)`` pairs); the
    others pass through and are counted in ``summary``.

    Raises:
        InputError: a malformed segmentation, naming the annotation.
    """
    work: dict[Any, list[tuple[dict, dict]]] = {}
    size_mismatch: dict[Any, list] = {}
    for img_id, anns in annotations_by_image(coco).items():
        img = images[img_id]
        for a in anns:
            if is_locked(a):
                summary.locked += 1
                continue
            rle, reason = classify_segmentation(a.get("segmentation"), img["height"], img["width"])
            if reason == "malformed":  # garbage in the input file: one sentence naming it
                annotation_rle(a, img, str(ann))
                raise InputError(f"{ann}: annotation {a.get('id')} of image {img_id} has a malformed segmentation")
            if rle is not None:
                work.setdefault(img_id, []).append((a, rle))
            elif reason is None:
                summary.without_mask += 1
            else:
                summary.bad.setdefault(reason, []).append(a["id"])
                if reason == "size":
                    size_mismatch.setdefault(img_id, a["segmentation"]["size"])
    for img_id, (h, w) in size_mismatch.items():
        if img_id not in work:  # not one odd mask: the image entry itself disagrees with its masks
            img = images[img_id]
            summary.failed.append((img_id, f"its masks are {h}×{w} (H×W) but the image entry of "
                                           f"{img['file_name']} says {img['height']}×{img['width']}"))
    for reason, ids in summary.bad.items():
        logger.warning("%d annotations %s are passed through unchanged (first: id %s)",
                       len(ids), BAD_MASK_REASONS[reason], ids[0])
    return work


def _resumable(part: Path, digest: str, images: dict, images_dir: Path, summary: RefineSummary, resume: bool,
               need_prompts: bool) -> dict[Any, dict]:
    """The partial file's records that still hold: same digest, same image file (the others are
    redone and counted in ``summary.changed``), with prompts when they are dumped."""
    done = _read_partial(part, digest) if resume else {}
    if need_prompts:  # images refined by a run that did not keep prompts are redone
        done = {k: v for k, v in done.items() if "prompts" in v}
    for img_id in list(done):  # an image whose file changed since it was journaled is redone
        path = images_dir / images[img_id]["file_name"] if img_id in images else None
        if path is None or not path.is_file() or done[img_id].get("sha256") != file_sha256(path):
            summary.changed.append(img_id)
            del done[img_id]
    if summary.changed:
        logger.warning("%d images changed since %s was written: refined again (first: image %s)",
                       len(summary.changed), part.name, summary.changed[0])
    if done:
        logger.info("resuming: %d images already refined in %s", len(done), part.name)
    return done


def _refine_images(part: Path, digest: str, done: dict, work: dict, images: dict, images_dir: Path, engine,
                   source: EmbeddingSource, cfg: RefineConfig, refined: Refined, summary: RefineSummary,
                   keep_prompts: bool) -> None:
    """Refine every image not ``done``, journaling each to ``part`` (a failed image is recorded
    and the run goes on)."""
    mode = "a" if done else "w"
    with disk_full_names(part), open(part, mode, encoding="utf-8") as journal, logging_to_tqdm():
        if not done:
            append_record(journal, {"digest": digest})
        todo = [i for i in work if i not in done]
        bar = progress(todo, desc="refine", unit="img")
        for img_id in bar:
            img = images[img_id]
            path = images_dir / img["file_name"]
            try:
                sha = file_sha256(path) if path.is_file() else None
                emb = source.get(img, path)
                lines = [] if keep_prompts else None
                new_anns, kept = refine_image(engine, emb, work[img_id], cfg, lines)
            except ImageError as e:
                summary.failed.append((img_id, str(e)))
                logger.warning("image %s failed: %s", img_id, e)
                continue
            record = {"image_id": img_id, "sha256": sha, "annotations": new_anns, "kept": kept}
            if lines is not None:
                record["prompts"] = lines
            append_record(journal, record)
            refined.images.add(img_id)
            refined.masks += len(new_anns)
            summary.refined_images += 1
            summary.kept_coarse += kept
            bar.set_postfix(masks=refined.masks, refresh=False)


def _write_outputs(coco: dict, ann: Path, images_dir: Path, out: Path, cfg: RefineConfig, engine, refined: Refined,
                   summary: RefineSummary, part: Path, dump_prompts, order: list) -> None:
    """The refined COCO file (its annotations streamed from the partial file, image by image),
    the prompt dump and the configuration beside it; the partial file goes unless some images failed."""
    head = {k: v for k, v in coco.items() if k != "annotations"}
    info = rebase(dict(coco["info"]), ann, out) if isinstance(coco.get("info"), dict) else {}
    info["sap_refine"] = {"source": str(ann), "settings": cfg.result_settings(), "sam": engine.info(),
                          "summary": summary.to_dict()}
    head["info"] = info
    if "info" not in coco:  # the in-memory dict put a new info after the annotations: keep those bytes
        head, tail = {k: v for k, v in head.items() if k != "info"}, {"info": info}
    else:
        tail = None
    with open(part, "rb") as journal:
        offsets = {i: pos for i, pos in journal_offsets(journal).items() if i in refined.images}
        write_json_stream(out, _refined_annotations(coco["annotations"], journal, offsets), head, "annotations", tail)
    if dump_prompts is not None:
        _write_dump(part, Path(dump_prompts), order)
    write_run_config(sidecar_path(out), "refine", cfg, sam=engine.info(),
                     inputs={"ann": str(ann), "images": str(images_dir)}, summary=summary.to_dict())
    if summary.failed:
        logger.info("kept %s: a rerun refines only the failed images", part.name)
    else:
        part.unlink(missing_ok=True)
