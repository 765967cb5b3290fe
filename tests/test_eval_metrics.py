"""`pseudolabel.evaluate`: IoUs on tiny hand-made masks, size buckets, counts, COCO mask AP."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pseudolabel.core.errors import InputError
from pseudolabel.evaluate import (
    annotation_ious,
    boundary_dilation,
    boundary_iou,
    coco_mask_ap,
    compare,
    evaluate_pseudo,
    format_table,
    image_disagreement,
    mask_boundary,
    size_bucket,
)
from pseudolabel.core.rle import encode_mask


def _mask(h: int, w: int, rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[rows, cols] = 1
    return m


def _coco(masks: dict[int, np.ndarray], extra: dict[int, dict] | None = None, h: int = 10,
          w: int = 10) -> dict:
    """One h×w image (id 1) with one annotation per mask, ids as given (+ extra fields by id)."""
    extra = extra or {}
    anns = [{"id": i, "image_id": 1, "category_id": 1, "segmentation": encode_mask(m),
             **extra.get(i, {})} for i, m in masks.items()]
    return {"images": [{"id": 1, "file_name": "a.png", "width": w, "height": h}],
            "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}


def test_boundary_width_is_two_percent_of_the_diagonal_at_least_one():
    assert boundary_dilation(10, 10) == 1  # 0.28 rounds to 0, raised to 1
    assert boundary_dilation(100, 100) == 3  # 2.83
    assert boundary_dilation(480, 640) == 16  # 0.02 * 800


def test_mask_boundary_is_mask_minus_erosion_and_counts_the_image_border():
    full = np.ones((7, 7), np.uint8)
    band = mask_boundary(full, 2)
    assert band.sum() == 49 - 9  # only the central 3×3 survives erosion by 2 (border = background)
    assert not band[2:5, 2:5].any() and band[0].all() and band[:, 6].all()


def test_shifted_square_hand_computed_ious():
    # GT rows 2..6, cols 2..6 (25 px); prediction one row lower: overlap 20, union 30.
    gt = _coco({7: _mask(10, 10, slice(2, 7), slice(2, 7))})
    pred = _coco({7: _mask(10, 10, slice(3, 8), slice(2, 7))})
    m = evaluate_pseudo(gt, pred)
    o = m["overall"]
    assert o["count"] == 1
    assert o["mask_miou"] == pytest.approx(20 / 30)
    assert o["box_miou"] == pytest.approx(20 / 30)  # boxes [2,2,7,7] vs [2,3,7,8]
    # d = 1: each band is the 16-px ring of its 5×5 square; the rings share rows 3..6 at the
    # side columns plus row 3 and row 6 crossings: 8 px, union 16 + 16 - 8 = 24.
    assert o["boundary_miou"] == pytest.approx(8 / 24)
    assert o["iou50"] == 1.0 and o["iou75"] == 0.0
    rec = m["per_annotation"][0]
    assert rec["id"] == 7 and rec["mask_iou"] == pytest.approx(2 / 3)


def test_boundary_iou_along_the_image_border():
    # GT fills the 10×10 image: band = its 36-px outer ring. Prediction = top half (50 px):
    # band = row 0, row 4 and columns 0/9 of rows 1..3 = 26 px; shared with the ring: row 0,
    # columns 0/9 of rows 1..4 = 18 px; union 36 + 26 - 18 = 44.
    full = np.ones((10, 10), np.uint8)
    top = _mask(10, 10, slice(0, 5), slice(0, 10))
    assert boundary_iou(full, top) == pytest.approx(18 / 44)
    assert boundary_iou(full, full) == 1.0
    m = evaluate_pseudo(_coco({1: full}), _coco({1: top}))
    assert m["overall"]["mask_miou"] == pytest.approx(0.5)
    assert m["overall"]["box_miou"] == pytest.approx(0.5)
    assert m["overall"]["boundary_miou"] == pytest.approx(18 / 44)


def test_empty_prediction_scores_zero():
    gt = _coco({1: _mask(10, 10, slice(2, 7), slice(2, 7))})
    pred = _coco({1: np.zeros((10, 10), np.uint8)})
    o = evaluate_pseudo(gt, pred)["overall"]
    assert o["mask_miou"] == 0 and o["box_miou"] == 0 and o["boundary_miou"] == 0


def test_size_buckets_follow_coco_areas():
    assert size_bucket(32**2 - 1) == "small"
    assert size_bucket(32**2) == "medium"
    assert size_bucket(96**2 - 1) == "medium"
    assert size_bucket(96**2) == "large"
    a = _mask(10, 10, slice(0, 4), slice(0, 4))
    # the GT 'area' field decides the bucket (as in COCOeval); a perfect and a half-right mask
    gt = _coco({1: a, 2: a, 3: a}, {1: {"area": 100.0}, 2: {"area": 2000.0}, 3: {"area": 10000.0}})
    half = _mask(10, 10, slice(0, 4), slice(0, 2))
    pred = _coco({1: a, 2: half, 3: a})
    m = evaluate_pseudo(gt, pred, boundary=False)
    assert m["by_size"]["small"]["count"] == 1 and m["by_size"]["small"]["mask_miou"] == 1.0
    assert m["by_size"]["medium"]["mask_miou"] == pytest.approx(0.5)
    assert m["by_size"]["large"]["count"] == 1
    assert m["overall"]["boundary_miou"] is None


def test_counts_crowd_missing_and_extra():
    a = _mask(10, 10, slice(0, 4), slice(0, 4))
    gt = _coco({1: a, 2: a, 3: a}, {3: {"iscrowd": 1}})
    pred = [{"id": 1, "image_id": 1, "segmentation": encode_mask(a)},
            {"id": 3, "image_id": 1, "segmentation": encode_mask(a)},
            {"id": 99, "image_id": 1, "segmentation": encode_mask(a)}]
    m = evaluate_pseudo(gt, pred)
    assert m["counts"] == {"gt": 2, "matched": 1, "gt_without_pseudo": 1, "pseudo_without_gt": 1,
                           "pseudo_without_mask": 0, "crowd_skipped": 1, "gt_without_mask": 0}
    assert m["coverage"] == 0.5


def test_bad_pseudo_input_is_one_sentence():
    a = _mask(10, 10, slice(0, 4), slice(0, 4))
    gt = _coco({1: a})
    with pytest.raises(InputError, match="no annotation id"):
        evaluate_pseudo(gt, _coco({5: a}))
    with pytest.raises(InputError, match="no .*annotation with a mask"):
        evaluate_pseudo({**gt, "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 4, 4]}]}, gt)
    with pytest.raises(InputError, match="is on image 2"):
        evaluate_pseudo(gt, [{"id": 1, "image_id": 2, "segmentation": encode_mask(a)}])
    with pytest.raises(InputError, match="disagrees with the image size"):
        evaluate_pseudo(gt, [{"id": 1, "image_id": 1, "segmentation": encode_mask(np.ones((5, 5), np.uint8))}])
    with pytest.raises(InputError, match="--pred"):
        annotation_ious(gt, [{"image_id": 1, "segmentation": encode_mask(a)}])


def test_image_disagreement_ranks_worst_image_first():
    a = _mask(10, 10, slice(0, 4), slice(0, 4))
    b = _mask(10, 10, slice(0, 4), slice(0, 2))
    two = {"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10},
                      {"id": 2, "file_name": "b.png", "width": 10, "height": 10}],
           "annotations": [{"id": 1, "image_id": 1, "segmentation": encode_mask(a)},
                           {"id": 2, "image_id": 2, "segmentation": encode_mask(a)},
                           {"id": 3, "image_id": 2, "segmentation": encode_mask(a)}]}
    other = json.loads(json.dumps(two))
    other["annotations"][1]["segmentation"] = encode_mask(b)  # image 2: IoU 0.5 and 1 -> 0.75
    del other["annotations"][0]  # image 1: its only object is missing -> 0
    rows = image_disagreement(two, other)
    assert [(r["image_id"], r["n"]) for r in rows] == [(1, 1), (2, 2)]
    assert rows[0]["mean_iou"] == 0.0 and rows[1]["mean_iou"] == pytest.approx(0.75)


def _results_from(coco: dict, score: float = 0.9) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"],
             "segmentation": a["segmentation"], "score": score} for a in coco["annotations"]]


def test_mask_ap_is_100_when_predictions_equal_ground_truth(small_gt):
    gt = json.loads(small_gt.read_text())
    ap = coco_mask_ap(small_gt, _results_from(gt))
    assert set(ap) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert ap["AP"] == pytest.approx(100.0) and ap["AP50"] == pytest.approx(100.0)
    assert ap["AP75"] == pytest.approx(100.0)
    # half of the objects found: recall caps at 0.5, so AP drops well below 100
    half = coco_mask_ap(gt, _results_from(gt)[::2])
    assert 20.0 < half["AP"] < 75.0


def test_mask_ap_of_no_results_is_zero_and_foreign_images_are_bad_input(small_gt):
    assert coco_mask_ap(small_gt, []) == {k: 0.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    gt = json.loads(small_gt.read_text())
    foreign = [{**r, "image_id": -5} for r in _results_from(gt)]
    with pytest.raises(InputError, match="no prediction is on an image"):
        coco_mask_ap(gt, foreign)


def test_compare_puts_results_side_by_side_and_marks_the_best():
    gt = _coco({7: _mask(10, 10, slice(2, 7), slice(2, 7))})
    good = evaluate_pseudo(gt, gt)
    worse = evaluate_pseudo(gt, _coco({7: _mask(10, 10, slice(3, 8), slice(2, 7))}))
    pred = {"kind": "pred", "ap": {"AP": 12.5, "AP50": 30.0}, "counts": {"results": 4}}
    table = compare({"top1": worse, "sapnet": good, "model": pred})
    assert table["columns"] == ["top1", "sapnet", "model"]
    rows = {r["metric"]: r for r in table["rows"]}
    assert rows["mask mIoU"]["values"][:2] == [pytest.approx(2 / 3), 1.0]
    assert rows["mask mIoU"]["best"] == 1
    assert rows["AP"]["values"] == [None, None, 12.5]
    text = format_table(table)
    row = next(ln for ln in text.splitlines() if ln.startswith("mask mIoU "))
    assert row.split()[-3:] == ["66.7", "100.0*", "-"]  # percent, best starred, absent "-"
    assert "12.5" in text and "AP50" in text
