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
