"""SAPNet selection geometry and losses against hand-computed values (ALGORITHMS.md §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pseudolabel.selector import geometry as geo
from pseudolabel.selector import official
from pseudolabel.selector.losses import gfocal, negative_loss, prm_loss, proposal_scores, psm_loss
from pseudolabel.selector.options import SelectConfig
from pseudolabel.selector.train import learning_rate

# ---- PDG -----------------------------------------------------------------------------------------


def test_pdg_penalises_only_boxes_holding_another_same_class_point():
    point = (5.0, 5.0)
    others = np.array([[8.0, 9.0]])  # d² = 9 + 16 = 25
    boxes = np.array([[0, 0, 10, 10],   # holds the other point
                      [0, 0, 7, 7],     # only its own point
                      [0, 0, 8, 10]])   # other point on the right edge: not strictly inside
    raw = geo.pdg_scores(boxes, point, others)
    # L = 25 ** 0.25 = 2.2360680; sigmoid(1 / L) = 0.6099765
    assert raw == pytest.approx([0.6099765, 1.0, 1.0], abs=1e-6)
    # the factor on the class logits is raw ** (1/64)
    assert geo.pdg_penalty(raw) == pytest.approx([0.9923058, 1.0, 1.0], abs=1e-6)
    assert geo.pdg_penalty(raw, power=0.015)[0] == pytest.approx(0.6099765 ** 0.015)


def test_pdg_sums_neighbours_and_offers_the_paper_distance():
    boxes = np.array([[0, 0, 10, 10]])
    others = np.array([[8.0, 9.0], [2.0, 1.0]])  # both at distance 5 from (5, 5)
    assert geo.pdg_distance_sum(boxes, (5, 5), others) == pytest.approx([2 * 2.2360680])
    assert geo.pdg_scores(boxes, (5, 5), others)[0] == pytest.approx(0.5556699, abs=1e-6)
    # paper: plain Euclidean distance, L = 5
    assert geo.pdg_scores(boxes, (5, 5), others[:1], root=0.5)[0] == pytest.approx(0.5498340, abs=1e-6)


def test_pdg_of_an_image_counts_same_class_points_only():
    points = np.array([[5.0, 5.0], [8.0, 9.0], [6.0, 6.0]])
    labels = np.array([0, 0, 1])
    boxes = [np.array([[0, 0, 10, 10]])] * 3
    scores = geo.image_pdg_scores(points, labels, boxes)
    assert scores[0][0] == pytest.approx(0.6099765, abs=1e-6)  # point 1 inside, point 2 other class
    assert scores[2][0] == 1.0                                   # no other point of class 1


# ---- PPG -----------------------------------------------------------------------------------------


def test_ppg_makes_26_boxes_for_6_proposals_growing_without_neighbour():
    proposals = np.arange(24, dtype=float).reshape(6, 4)
    out = geo.ppg_boxes(proposals, np.array([10, 10, 30, 50]), pdg_score=1.0)
    assert out.shape == (26, 4)
    np.testing.assert_allclose(out[:6], proposals)
    # centre (20, 30), half-size (10, 20): factor 1.01 first, 1.15 last of the 15
    np.testing.assert_allclose(out[6], [9.9, 9.8, 30.1, 50.2])
    np.testing.assert_allclose(out[20], [8.5, 7.0, 31.5, 53.0])
    # then growth 1.08, 1.085, ..., 1.10
    np.testing.assert_allclose(out[21], [9.2, 8.4, 30.8, 51.6])
    np.testing.assert_allclose(out[25], [9.0, 8.0, 31.0, 52.0])


def test_ppg_shrinks_by_score_with_a_neighbour_and_clamps_at_zero():
    out = geo.ppg_boxes(np.zeros((3, 4)), np.array([10, 10, 30, 50]), pdg_score=0.5)
    assert out.shape == (23, 4)
    # factors 1 − (0.005 / 0.5)·n = 0.99 … 0.95
    np.testing.assert_allclose(out[18], [10.1, 10.2, 29.9, 49.8])
    np.testing.assert_allclose(out[22], [10.5, 11.0, 29.5, 49.0])
    np.testing.assert_allclose(geo.ppg_factors(0.5)[15:], [0.99, 0.98, 0.97, 0.96, 0.95])
    near_origin = geo.ppg_boxes(np.zeros((1, 4)), np.array([0, 0, 20, 20]), 1.0)
    np.testing.assert_allclose(near_origin[15], [0, 0, 21.5, 21.5])  # 1.15: −1.5 clamped to 0


# ---- NPG -----------------------------------------------------------------------------------------


def test_npg_random_boxes_follow_the_sampling_rule():
    boxes = geo.npg_random_boxes(100, 80, 2000, np.random.default_rng(0))
    assert boxes.shape == (2000, 4)
    assert (boxes[:, 0] >= -20).all() and (boxes[:, 0] < 100).all()
    assert (boxes[:, 1] >= -16).all() and (boxes[:, 1] < 80).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 2] <= 120).all()
    assert (boxes[:, 3] >= boxes[:, 1]).all() and (boxes[:, 3] <= 96).all()


def test_npg_keeps_low_iou_boxes_and_one_half_box_per_large_winner():
    proposals = np.array([[0, 0, 50, 40], [10, 10, 90, 80]], dtype=float)
    winners = np.array([[10, 10, 90, 80],    # 80×70 = 5600 > 64²: adds its half box
                        [0, 0, 60, 60]], dtype=float)  # 3600 ≤ 64²: none
    out = geo.npg_boxes(100, 80, proposals, winners, np.random.default_rng(1), n=500)
    rand = geo.npg_random_boxes(100, 80, 500, np.random.default_rng(1))
    from pseudolabel.core.rle import box_iou_xyxy

    kept = rand[box_iou_xyxy(rand, proposals).max(axis=1) < 0.3]
    assert 0 < len(kept) < 500
    assert len(out) == len(kept) + 1
    np.testing.assert_allclose(out[:-1], kept)
    assert (box_iou_xyxy(out[:-1], proposals) < 0.3).all()
    np.testing.assert_allclose(out[-1], [30, 27.5, 70, 62.5])  # centre (50, 45), 40×35
    # the half box has IoU 0.25 with its winner: a part threshold of 0.2 drops it
    strict = geo.npg_boxes(100, 80, proposals, winners, np.random.default_rng(1), n=500, part_iou_thr=0.2)
    assert len(strict) == len(kept)
    # without proposals every random box is kept
    assert len(geo.npg_boxes(100, 80, np.zeros((0, 4)), np.zeros((0, 4)), np.random.default_rng(1), n=7)) == 7


# ---- BMS -----------------------------------------------------------------------------------------


def test_bms_expands_towards_a_larger_box_with_iou_above_06():
    box, branch = geo.bms(np.array([0, 0, 10, 10]), np.array([[0, 0, 10, 12]]))
    # IoU = 100 / 120 = 5/6; y2 = (12 + 5/6·10) / (1 + 5/6) = 122/11
    assert branch == "expand"
    np.testing.assert_allclose(box, [0, 0, 10, 122 / 11])


def test_bms_moves_into_a_containing_box_with_iou_above_03():
    box, branch = geo.bms(np.array([10, 10, 20, 20]), np.array([[9, 9, 25, 25]]))
    # IoU = 100 / 256 = 0.390625; pseudo ← (IoU·cand + pseudo) / (1 + IoU)
    assert branch == "contain"
    np.testing.assert_allclose(box, [13.515625 / 1.390625, 13.515625 / 1.390625,
                                     29.765625 / 1.390625, 29.765625 / 1.390625])


def test_bms_containment_uses_a_2_pixel_slack():
    cand = np.array([[11, 11, 25, 25]])  # IoU 81/215 = 0.377, x1 one pixel inside the pseudo box
    assert geo.bms(np.array([10, 10, 20, 20]), cand)[1] == "contain"
    assert geo.bms(np.array([10, 10, 20, 20]), cand, slack=0.0)[1] == "none"


@pytest.mark.parametrize("cand", [
    [[0, 0, 9, 10]],        # smaller area: not considered
    [[0, 0, 10, 10]],       # equal area: not considered
    [[0, 0, 30, 30]],       # larger, IoU 0.11
    [[5, 0, 17, 10]],       # larger, IoU 0.41 but not containing
])
def test_bms_leaves_the_box_alone_otherwise(cand):
    box, branch = geo.bms(np.array([0, 0, 10, 10]), np.array(cand, dtype=float))
    assert branch == "none"
    np.testing.assert_allclose(box, [0, 0, 10, 10])


def test_bms_needs_a_larger_area_and_better_iou_than_the_last_accepted():
    cands = np.array([[0, 0, 10, 12],     # expand: box y2 = 122/11, reference area 120, best 5/6
                      [0, 0, 10, 11.5],   # area 115 ≤ 120: skipped
                      [0, 0, 10, 13]])    # IoU with the new box 110.909/130 = 0.8531 > 5/6: expand
    box, branch = geo.bms(np.array([0, 0, 10, 10]), cands)
    y = 122 / 11
    iou = 10 * y / 130
    assert branch == "expand"
    np.testing.assert_allclose(box, [0, 0, 10, (13 + iou * y) / (1 + iou)])
    assert box[3] == pytest.approx(12.1210978, abs=1e-6)


def test_final_mask_is_the_proposal_with_the_best_box_iou():
    proposals = np.array([[0, 0, 10, 10], [0, 0, 20, 20], [5, 5, 15, 15], [0, 0, 20, 20]], dtype=float)
    assert geo.final_mask_index(proposals, np.array([0, 0, 19, 19])) == 1  # 361/400, first of a tie
    assert geo.final_mask_index(proposals, np.array([6, 6, 15, 15])) == 2
    np.testing.assert_allclose(geo.clamp_box(np.array([-3, 2, 50, 90]), 40, 80), [0, 2, 40, 80])


# ---- losses ----------------------------------------------------------------------------------------


def test_gfocal_values():
    p = torch.tensor([0.8, 0.3, 0.5])
    q = torch.tensor([1.0, 0.0, 0.5])
    # 0.2² · −log 0.8 ; 0.3² · −log 0.7 ; 0
    assert gfocal(p, q).tolist() == pytest.approx([0.0089257, 0.0321006, 0.0], abs=1e-6)


def test_psm_loss_bce_of_the_bag_score_with_and_without_pdg():
    valid = torch.ones(1, 2, dtype=torch.bool)
    labels = torch.tensor([0])
    zeros = torch.zeros(1, 2, 2)
    # every score 0.5: bag = [0.5, 0.5], BCE = 2·log 2, × 0.25
    assert float(psm_loss(zeros, zeros, valid, labels)) == pytest.approx(0.3465736, abs=1e-6)
    logits = torch.tensor([[[2.0, 0.0], [2.0, 0.0]]])
    # PDG factor 0.5 on proposal 0 turns its logits into [1, 0]: bag = [0.8059278, 0.1940722]
    loss = psm_loss(logits, zeros, valid, labels, pdg_factor=torch.tensor([[0.5, 1.0]]))
    assert float(loss) == pytest.approx(0.1078805, abs=1e-6)


def test_prm_and_negative_losses():
    valid = torch.ones(1, 2, dtype=torch.bool)
    zeros = torch.zeros(1, 2, 2)
    # sigmoid 0.5 everywhere: gfocal(0.5, 1) + gfocal(0.5, 0) = 2 · 0.25 · log 2; × weight 0.8 × 0.25
    loss = prm_loss(zeros, zeros, valid, torch.tensor([0]), torch.tensor([0.8]))
    assert float(loss) == pytest.approx(0.0693147, abs=1e-6)
    # 2 negatives at 0.5, label weights mean 0.6, 2 points: 0.75 · 0.6 · 2 · 0.25·log 2 / 2
    neg = negative_loss(torch.zeros(2, 1), 2, torch.tensor([0.8, 0.4]))
    assert float(neg) == pytest.approx(0.0779791, abs=1e-6)


def test_selection_scores_ignore_padding():
    cls = torch.tensor([[[0.0, 1.0], [3.0, 0.0], [9.0, 0.0]]])
    ins = torch.zeros(1, 3, 2)
    valid = torch.tensor([[True, True, False]])
    score, cls_at = proposal_scores(cls, ins, valid, torch.tensor([0]))
    assert int(score.argmax()) == 1
    assert float(score[0, 2]) == 0.0 and float(cls_at[0, 2]) == 0.0
    # softmax([3, 0])[0] = 0.9525741, instance 1/2
    assert float(score[0, 1]) == pytest.approx(0.9525741 / 2, abs=1e-6)


def test_learning_rate_schedule():
    cfg = SelectConfig(batch_size=4)
    base = 0.015 * 8 / 32  # 4 images × 2 processes
    assert learning_rate(cfg, 2, 0, 0) == pytest.approx(base * 0.001)
    assert learning_rate(cfg, 2, 0, 250) == pytest.approx(base * (1 - 0.5 * 0.999))
    assert learning_rate(cfg, 2, 7, 5000) == pytest.approx(base)
    assert learning_rate(cfg, 2, 8, 5000) == pytest.approx(base * 0.1)
    assert learning_rate(cfg, 2, 11, 5000) == pytest.approx(base * 0.01)
    short = SelectConfig(epochs=3, batch_size=32)  # steps at 2 and 2.75 of 3 epochs
    assert learning_rate(short, 1, 2, 5000) == pytest.approx(0.0015)


def test_bce_stays_finite_at_zero_and_one():
    from pseudolabel.selector.losses import binary_cross_entropy

    p = torch.tensor([0.0, 1.0, 0.25], requires_grad=True)
    loss = binary_cross_entropy(p, torch.tensor([1.0, 0.0, 1.0]))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(p.grad).all()
    assert float(loss[2].detach()) == pytest.approx(1.3862944, abs=1e-6)  # −log 0.25


def test_a_confident_whole_object_pick_is_mined_towards_a_touching_neighbour():
    """The ceiling of SAPNet's geometry (docs/selector.md, "The ceiling of SAPNet's geometry"): the official top-1
    box is ``proposal × s/(s + 1e-8)`` in float32. At a confident score that is the whole
    object's box exactly, its own proposal is not larger, and BMS's contain rule moves it towards
    SAM's larger mask that holds a touching neighbour; the box-to-mask match then lands on the
    object with a background band. At a low score the box is a hair smaller, the whole object's
    own proposal is a larger candidate with IoU ≈ 1, and it stays."""
    # part, whole, merged with a neighbour below-right, small part, eroded, with background (XYXY)
    bag = np.array([[14, 14, 24, 24], [10, 10, 30, 30], [10, 10, 44, 40],
                    [15, 15, 25, 25], [11, 11, 29, 29], [7, 7, 33, 33]], dtype=float)
    for score, branch, final in ((0.9, "contain", 5), (0.05, "expand", 1)):
        top1 = official.top1_box(bag[1], score, 100, 100)
        assert bool((top1 == torch.tensor(bag[1], dtype=torch.float32)).all()) == (score == 0.9)
        mined, how = official.bms(top1, bag[:3])
        assert how == branch
        assert official.final_index(bag, mined) == final
    # contain: (IoU·merged + whole) / (1 + IoU) with IoU = 400/1020
    iou = 400 / 1020
    np.testing.assert_allclose(official.bms(official.top1_box(bag[1], 0.9, 100, 100), bag[:3])[0].numpy(),
                               (iou * bag[2] + bag[1]) / (1 + iou), rtol=1e-6)
