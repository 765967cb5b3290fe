"""SOLOv2 inference on hand-built cases: matrix NMS, point-NMS, boxes from masks, top-k before upsampling."""

from __future__ import annotations

import math

import pytest
import torch

from segtrain.postprocess import (MATRIX_NMS_KERNELS, InferenceParams, masks_to_boxes_xyxy, matrix_nms, point_nms,
                                  postprocess_image)


def _stripe(x1: int, x2: int, w: int = 8, h: int = 2) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[:, x1:x2] = True
    return m


@pytest.mark.parametrize("kernel", sorted(MATRIX_NMS_KERNELS))
def test_matrix_nms_duplicate_suppressed_disjoint_and_other_class_kept(kernel):
    a = _stripe(0, 4)
    masks = torch.stack([a, a, _stripe(4, 8), a])
    labels = torch.tensor([0, 0, 0, 1])
    scores = torch.tensor([0.8, 0.9, 0.7, 0.6])  # the duplicate comes first: order must not matter
    out = matrix_nms(masks, labels, scores, kernel=kernel, sigma=2.0)
    expected_dup = 0.8 * (math.exp(-2.0) if kernel == "gaussian" else 0.0)  # IoU 1 with a better mask
    assert out[0].item() == pytest.approx(expected_dup, abs=1e-6)
    assert out[1].item() == pytest.approx(0.9)  # the best is never decayed
    assert out[2].item() == pytest.approx(0.7)  # disjoint: kept as is
    assert out[3].item() == pytest.approx(0.6)  # same mask, other class: kept as is


def test_matrix_nms_gaussian_vs_linear_and_compensation():
    # A=[0,4), B=[2,6), C=[4,8): IoU(A,B) = IoU(B,C) = 1/3, IoU(A,C) = 0; scores A > B > C.
    masks = torch.stack([_stripe(0, 4), _stripe(2, 6), _stripe(4, 8)])
    labels = torch.zeros(3, dtype=torch.long)
    scores = torch.tensor([0.9, 0.8, 0.7])
    gauss = matrix_nms(masks, labels, scores, "gaussian", sigma=2.0)
    linear = matrix_nms(masks, labels, scores, "linear")
    assert gauss[1].item() == pytest.approx(0.8 * math.exp(-2.0 / 9))
    assert linear[1].item() == pytest.approx(0.8 * (2 / 3))
    # C overlaps only B, which is itself suppressed by as much: the decay is compensated away
    assert gauss[2].item() == pytest.approx(0.7)
    assert linear[2].item() == pytest.approx(0.7)


def test_matrix_nms_empty_and_unknown_kernel():
    assert matrix_nms(torch.zeros(0, 4, 4), torch.zeros(0), torch.zeros(0)).numel() == 0
    with pytest.raises(ValueError, match="gaussian"):
        matrix_nms(torch.ones(1, 2, 2), torch.zeros(1), torch.ones(1), kernel="cosine")


def test_point_nms_keeps_the_local_maxima_of_2x2_windows():
    probs = torch.tensor([[0.9, 0.5, 0.1],
                          [0.3, 0.2, 0.8],
                          [0.1, 0.1, 0.1]])[None, None]
    kept = point_nms(probs)[0, 0]
    # each cell competes with its upper, left and upper-left neighbours
    assert torch.equal(kept, torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.0, 0.8], [0.0, 0.0, 0.0]]))


def test_boxes_from_masks_are_tight_exclusive_and_zero_only_when_empty():
    masks = torch.zeros(3, 6, 7, dtype=torch.bool)
    masks[0, 1:4, 2:5] = True
    masks[1, 5, 6] = True
    boxes = masks_to_boxes_xyxy(masks)
    assert boxes.tolist() == [[2, 1, 5, 4], [6, 5, 7, 6], [0, 0, 0, 0]]


def _hand_made_outputs():
    """One level (S=2, C=2, D=1) whose kernels select a square of the mask features."""
    feat = torch.full((1, 8, 8), -10.0)
    feat[0, 2:6, 2:6] = 10.0  # the object, at stride 4: input pixels 8..24
    probs = torch.zeros(2, 2, 2)
    probs[0, 0, 0] = 0.9  # class 0 at cell (0, 0)
    probs[0, 1, 1] = 0.8  # a duplicate of the same mask, same class
    probs[1, 0, 1] = 0.05  # below the score threshold
    kernels = torch.ones(1, 2, 2)
    return [probs], [kernels], feat


def test_postprocess_image_boxes_from_masks_and_duplicates_decayed():
    probs, kernels, feat = _hand_made_outputs()
    params = InferenceParams()
    pred = postprocess_image(probs, kernels, feat, (8,), input_hw=(32, 32), original_hw=(64, 64), params=params)
    assert len(pred) == 2
    assert pred.labels.tolist() == [0, 0]
    assert pred.scores[0].item() == pytest.approx(0.9, abs=1e-3)  # maskness ≈ 1
    assert pred.scores[1].item() == pytest.approx(0.8 * math.exp(-2.0), abs=1e-3)
    assert pred.masks.shape == (2, 64, 64)
    # the square covers input pixels 8..24 of 32, i.e. 16..48 of the 64-px original
    assert pred.boxes[0].tolist() == pytest.approx([16, 16, 48, 48], abs=1)
    assert torch.equal(pred.boxes, masks_to_boxes_xyxy(pred.masks))
    linear = postprocess_image(probs, kernels, feat, (8,), (32, 32), (64, 64),
                               InferenceParams(nms_kernel="linear"))
    assert len(linear) == 1  # the duplicate's score drops to 0 < update_thr


def test_topk_before_upsampling_matches_upsampling_everything():
    torch.manual_seed(0)
    s, d, c = 6, 8, 3
    probs = [torch.rand(c, s, s)]
    kernels = [torch.randn(d, s, s)]
    feat = torch.randn(d, 12, 12) * 3
    params = InferenceParams(score_thr=0.3, max_per_img=5)
    fast = postprocess_image(probs, kernels, feat, (4,), (44, 40), (90, 80), params)
    slow = postprocess_image(probs, kernels, feat, (4,), (44, 40), (90, 80), params, upsample_all=True)
    assert 0 < len(fast) <= 5
    assert torch.equal(fast.masks, slow.masks) and torch.allclose(fast.scores, slow.scores)


def test_postprocess_image_without_candidates_is_empty():
    probs, kernels, feat = _hand_made_outputs()
    pred = postprocess_image([p * 0 for p in probs], kernels, feat, (8,), (32, 32), (50, 60), InferenceParams())
    assert len(pred) == 0 and pred.masks.shape == (0, 50, 60) and pred.boxes.shape == (0, 4)
