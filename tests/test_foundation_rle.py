"""RLE, boxes and IoU on tiny hand-made masks."""

import json

import numpy as np
import pytest

from pseudolabel.core.errors import InputError
from pseudolabel.core.rle import (box_iou_xyxy, decode_rle, decode_rles, encode_mask, encode_masks,
                             mask_iou, mask_to_box_xyxy, masks_to_boxes_xyxy, rle_area, rle_iou,
                             rle_to_bbox_xywh, segmentation_to_rle, xywh_to_xyxy, xyxy_to_xywh)


def _mask():
    m = np.zeros((5, 7), np.uint8)
    m[1:4, 2:6] = 1
    m[0, 0] = 1
    return m


def test_encode_decode_round_trip_and_json():
    m = _mask()
    rle = encode_mask(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [5, 7]
    rle = json.loads(json.dumps(rle))  # JSON-ready
    np.testing.assert_array_equal(decode_rle(rle), m)
    assert rle_area(rle) == 13
    assert rle_to_bbox_xywh(rle) == [0.0, 0.0, 6.0, 4.0]


def test_stack_round_trip_keeps_order():
    a, b = _mask(), np.zeros((5, 7), np.uint8)
    b[4, 6] = 1
    rles = encode_masks(np.stack([a, b]))
    np.testing.assert_array_equal(decode_rles(rles), np.stack([a, b]))
    assert encode_masks(np.zeros((0, 5, 7))) == []


def test_polygon_and_uncompressed_rle_to_rle():
    square = [[1, 1, 5, 1, 5, 4, 1, 4]]
    m = decode_rle(segmentation_to_rle(square, 6, 8))
    assert m.shape == (6, 8) and m.sum() > 0 and m[2, 2] == 1 and m[0, 0] == 0
    # uncompressed RLE: column-major, zeros first: 3 zeros, 2 ones, rest zeros in a 3x3
    unc = {"size": [3, 3], "counts": [3, 2, 4]}
    got = decode_rle(segmentation_to_rle(unc, 3, 3))
    expected = np.zeros((3, 3), np.uint8)
    expected[0, 1] = expected[1, 1] = 1
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("seg,msg", [
    ([[1, 1, 2, 2]], "at least 3"),
    ({"size": [4, 4], "counts": "abc"}, "disagrees"),
    ({"counts": "abc"}, "size"),
    (42, "unsupported"),
    ({"size": [3, 3], "counts": "garbage!!"}, "alphabet"),
    ({"size": [3, 3], "counts": "0a"}, "cut off"),  # 'a' carries the continuation bit
    ({"size": [3, 3], "counts": "05"}, "covers 5 pixels"),
    ({"size": [3, 3], "counts": "0" + "Z" * 8 + "1"}, "too long"),
    ({"size": [3, 3], "counts": "0@"}, "negative"),  # '@' = 16, the sign bit: a run of 16 - 32
    ({"size": [3, 3], "counts": [4, 6]}, "covering"),
    ({"size": [3, 3], "counts": [9, "x"]}, "whole numbers"),
    ({"size": ["3px", 3], "counts": "09"}, "whole number"),
    ({"size": [3, 3, 1], "counts": "09"}, "height, width"),
    ([[0, 0, 1, "a", 2, 2]], "not a number"),
    ([[0, 0, 1, float("nan"), 2, 2]], "not finite"),
    ([[0, 0, 1e9, 0, 1e9, 1e9]], "far outside"),
])
def test_bad_segmentations_raise_one_sentence(seg, msg):
    with pytest.raises(InputError, match=msg):
        segmentation_to_rle(seg, 3, 3)


def test_boxes_and_ious_by_hand():
    m = _mask()
    np.testing.assert_array_equal(mask_to_box_xyxy(m), [0, 0, 6, 4])
    np.testing.assert_array_equal(masks_to_boxes_xyxy(np.zeros((1, 3, 3))), [[0, 0, 0, 0]])
    np.testing.assert_allclose(xyxy_to_xywh(xywh_to_xyxy([[1, 2, 3, 4]])), [[1, 2, 3, 4]])
    iou = box_iou_xyxy([[0, 0, 2, 2]], [[1, 1, 3, 3], [5, 5, 6, 6], [0, 0, 2, 2]])
    np.testing.assert_allclose(iou, [[1 / 7, 0.0, 1.0]])
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    np.testing.assert_allclose(rle_iou([encode_mask(a)], [encode_mask(b), encode_mask(a)]), [[4 / 12, 1.0]])


def test_rle_counts_match_pycocotools_runs_on_random_masks():
    from pseudolabel.core.rle import check_rle, rle_counts

    rng = np.random.default_rng(0)
    for t in range(200):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if t % 7 == 0:
            m[:] = t % 2
        flat = m.flatten(order="F")  # COCO runs go down the columns, starting with background
        edges = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
        runs = ([0] if flat[0] else []) + np.diff(edges).tolist()
        rle = encode_mask(m)
        assert rle_counts(rle["counts"]).tolist() == runs
        check_rle(rle)


def test_absurd_sizes_are_refused_before_anything_is_allocated():
    from pseudolabel.core.rle import MAX_MASK_PIXELS, check_mask_size

    assert check_mask_size(8000, 8000) == (8000, 8000)  # a large photo is fine
    assert check_mask_size(480.0, 640) == (480, 640)
    for h, w, msg in [(10**6, 10**6, "limit"), (0, 5, "positive"), (-3, 5, "positive"), (True, 5, "whole"),
                      (2.5, 5, "whole"), ("640", 5, "whole"), (float("nan"), 5, "whole")]:
        with pytest.raises(InputError, match=msg):
            check_mask_size(h, w)
    side = int(MAX_MASK_PIXELS ** 0.5) * 2
    with pytest.raises(InputError, match="limit"):  # a well-formed RLE of a huge size: no decode
        segmentation_to_rle({"size": [side, side], "counts": "0" + "1"}, side, side)


def test_every_mask_of_the_100_image_coco_set_passes_the_check_unchanged(coco100):
    """No false alarm on real data: 746 COCO masks (RLE and polygons) pass the validation, and the
    runs it reads give pycocotools' own areas."""
    from pseudolabel.core.rle import rle_counts

    sizes = {im["id"]: (im["height"], im["width"]) for im in coco100["images"]}
    n = 0
    for a in coco100["annotations"]:
        rle = segmentation_to_rle(a["segmentation"], *sizes[a["image_id"]])
        assert int(rle_counts(rle["counts"])[1::2].sum()) == rle_area(rle)
        n += 1
    assert n == len(coco100["annotations"]) > 700
