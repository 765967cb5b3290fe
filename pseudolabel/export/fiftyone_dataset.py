"""FiftyOne: a persistent dataset with every stage's masks as separate label fields.

One sample per image (absolute file path, width and height as metadata). Each COCO file given
becomes a label field of ``fo.Detections``: the result (``--ann``, field ``--field``, default
``labels``) and, when given, ``ground_truth``, ``pseudo`` (selected), ``refined`` and
``predictions``. Each detection has the relative box ``[x, y, w, h]`` (top-left, in [0, 1]),
its instance mask cropped to the box (FiftyOne's convention), the category name as label, a
``confidence`` (see :func:`pseudolabel.export.common.object_score`) and our provenance as
attributes: ``sap_id``, ``method``, ``proposal_rank``, ``prompt_kind``, ``refine_iou``,
``review_risk``, ``locked``. The annotated clicks of the result form a ``points`` field of
keypoints.

FiftyOne runs its own MongoDB (the ``fiftyone-db`` package ships it; FiftyOne starts it on first
use and stops it with the last process). The dataset is persistent: ``fo.load_dataset(NAME)``
finds it again; an existing dataset of the same name is replaced only with ``overwrite``. Usage
statistics are switched off (``FIFTYONE_DO_NOT_TRACK``) unless the environment says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pseudolabel.core.errors import InputError
from pseudolabel.core.progress import progress

from .common import ExportReport, iter_objects

INSTALL = ("FiftyOne export needs the [fiftyone] extra: pip install 'sap[fiftyone]' (offline on Debian 12: "
           "see docs/review.md, section 'Exports')")
FIELDS = ("ground_truth", "pseudo", "refined", "predictions")


def _fiftyone():
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    try:
        import fiftyone as fo
    except ImportError:
        raise InputError(INSTALL) from None
    return fo


def _attributes(ann: dict[str, Any]) -> dict[str, Any]:
    sap = ann.get("sap") if isinstance(ann.get("sap"), dict) else {}
    review = sap.get("review") if isinstance(sap.get("review"), dict) else {}
    out = {"sap_id": ann["id"], "method": sap.get("method"), "proposal_rank": sap.get("rank"),
           "prompt_kind": sap.get("prompt_kind"), "refine_iou": ann.get("refine_iou"),
           "review_risk": review.get("risk"), "locked": bool(sap.get("locked", False))}
    return {k: v for k, v in out.items() if v is not None}


def _detections(fo, objs, w: int, h: int):
    dets = []
    for o in objs:
        ys, xs = o.mask.nonzero()
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        det = fo.Detection(label=o.label, bounding_box=[x1 / w, y1 / h, (x2 - x1) / w, (y2 - y1) / h],
                           mask=o.mask[y1:y2, x1:x2].copy(), confidence=o.score, **_attributes(o.ann))
        dets.append(det)
    return fo.Detections(detections=dets)


def export_fiftyone(coco: dict[str, Any], name: str, images_dir: str | os.PathLike, field: str = "labels",
                    others: dict[str, dict[str, Any]] | None = None, overwrite: bool = False) -> ExportReport:
    """Create the persistent FiftyOne dataset ``name`` (see the module docstring).

    Args:
        coco: the result to export (its images define the samples).
        name: the dataset name.
        images_dir: folder of the images.
        field: label field of ``coco``.
        others: more COCO files by field name (``ground_truth``, ``pseudo``, ``refined``,
            ``predictions``), matched to the samples by image id.
        overwrite: replace an existing dataset of the same name.
    """
    fo = _fiftyone()
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"image folder {images_dir} does not exist")
    if fo.dataset_exists(name) and not overwrite:
        raise InputError(f"a FiftyOne dataset named {name!r} exists; pass --overwrite to replace it")
    others = dict(others or {})
    if field in others:
        raise InputError(f"label field {field!r} is given twice")
    report = ExportReport("fiftyone", name, extra={"fields": [field, *others]})
    per_field: dict[str, dict[Any, list]] = {}
    for fname, other in others.items():
        sub = ExportReport("fiftyone", name)
        per_field[fname] = {img["id"]: objs for img, objs in iter_objects(other, sub)}
        for reason, ids in sub.not_represented.items():
            report.not_represented.setdefault(f"{fname}:{reason}", []).extend(ids)
    dataset = fo.Dataset(name, persistent=True, overwrite=overwrite)
    samples = []
    for img, objs in progress(iter_objects(coco, report), desc="fiftyone", total=len(coco["images"])):
        w, h = int(img["width"]), int(img["height"])
        sample = fo.Sample(filepath=str((images_dir / img["file_name"]).resolve()),
                           metadata=fo.ImageMetadata(width=w, height=h), sap_image_id=img["id"])
        sample[field] = _detections(fo, objs, w, h)
        points = [fo.Keypoint(label=o.label, points=[(float(o.ann["point"][0]) / w, float(o.ann["point"][1]) / h)],
                              sap_id=o.id) for o in objs if isinstance(o.ann.get("point"), (list, tuple))]
        if points:
            sample["points"] = fo.Keypoints(keypoints=points)
        for fname, by_image in per_field.items():
            sample[fname] = _detections(fo, by_image.get(img["id"], []), w, h)
        samples.append(sample)
        report.objects += len(objs)
        report.images += 1
    dataset.add_samples(samples, progress=False)
    dataset.info = {"made_by": "sap export --to fiftyone", "fields": [field, *others]}
    dataset.save()
    return report


def launch(name: str) -> None:
    """Open the FiftyOne App on dataset ``name`` and wait until it is closed."""
    fo = _fiftyone()
    session = fo.launch_app(fo.load_dataset(name))
    session.wait()
