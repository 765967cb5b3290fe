"""SOLOv2 losses: dice and focal on hand cases, zero-instance images, and the MPS auxiliary term."""

from __future__ import annotations

import pytest
import torch

from segtrain.losses import dice_loss, focal_loss, solo_losses
from segtrain.targets import InstanceTargets, build_targets

GRIDS = (4, 4, 2, 2, 2)
RANGES = ((1, 20), (10, 40), (20, 80), (40, 160), (80, 640))


def _batch(targets: list[InstanceTargets], d: int = 4, c: int = 2, h: int = 8, w: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b = len(targets)
    cates = [torch.randn(b, c, s, s, generator=g, requires_grad=True) for s in GRIDS]
    kernels = [torch.randn(b, d, s, s, generator=g, requires_grad=True) for s in GRIDS]
    feats = torch.randn(b, d, h, w, generator=g, requires_grad=True)
    levels = [build_targets(t, (4 * h, 4 * w), GRIDS, RANGES, 0.2, c) for t in targets]
    return cates, kernels, feats, levels


def _one_instance(alt: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> InstanceTargets:
    mask = torch.zeros(1, 8, 8, dtype=torch.uint8)
    mask[0, 2:6, 2:6] = 1
    return InstanceTargets(torch.tensor([1]), torch.tensor([[8.0, 8.0, 24.0, 24.0]]), torch.tensor([[16.0, 16.0]]),
                           mask, alt, valid)


def test_dice_loss_hand_cases():
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert dice_loss(torch.tensor([[20.0, 20.0, -20.0, -20.0]]), t).item() == pytest.approx(0.0, abs=1e-3)
    assert dice_loss(torch.tensor([[-20.0, -20.0, 20.0, 20.0]]), t).item() == pytest.approx(1.0, abs=1e-3)
    # p = 0.5 everywhere: 1 − 2·1 / (1 + 2) = 1/3
    assert dice_loss(torch.zeros(1, 4), t).item() == pytest.approx(1 / 3, abs=1e-3)


def test_focal_loss_ignores_easy_negatives_and_counts_background_as_all_zero():
    logits = torch.tensor([[-10.0, -10.0], [10.0, -10.0]])
    assert focal_loss(logits, torch.tensor([2, 0]), num_classes=2).item() == pytest.approx(0.0, abs=1e-6)
    assert focal_loss(logits, torch.tensor([2, 1]), num_classes=2).item() > 1.0


def test_losses_finite_with_a_zero_instance_image_and_gradients_flow():
    targets = [_one_instance(), InstanceTargets.empty(8, 8)]
    cates, kernels, feats, levels = _batch(targets)
    out = solo_losses(cates, kernels, feats, targets, levels, num_classes=2)
    total = out["loss_cate"] + out["loss_mask"]
    assert torch.isfinite(total) and out["num_pos"].item() > 0
    total.backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0


def test_losses_of_a_batch_without_any_instance():
    targets = [InstanceTargets.empty(8, 8), InstanceTargets.empty(8, 8)]
    cates, kernels, feats, levels = _batch(targets)
    out = solo_losses(cates, kernels, feats, targets, levels, num_classes=2)
    assert out["loss_mask"].item() == 0.0 and out["num_pos"].item() == 0
    assert torch.isfinite(out["loss_cate"]) and out["loss_cate"].item() > 0
    (out["loss_cate"] + out["loss_mask"]).backward()  # the graph stays connected (DDP needs it)
    assert kernels[0].grad is not None


def _alternatives(n_ranks: int) -> tuple[torch.Tensor, torch.Tensor]:
    alt = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    for j in range(3):  # shifted versions of the object
        alt[0, j, 2 + j:6 + j, 2:6] = 1
    valid = torch.tensor([[j < n_ranks for j in range(3)]])
    return alt, valid


def test_mps_term_is_off_without_alternatives_or_weight_and_positive_otherwise():
    base = [_one_instance()]
    cates, kernels, feats, levels = _batch(base)
    plain = solo_losses(cates, kernels, feats, base, levels, num_classes=2, mps_weight=0.25)
    assert plain["loss_mps"].item() == 0.0
    alt, valid = _alternatives(3)
    with_alt = [_one_instance(alt, valid)]
    out = solo_losses(cates, kernels, feats, with_alt, levels, num_classes=2, mps_weight=0.25, mps_ranks=(2, 3, 4))
    assert out["loss_mps"].item() > 0
    assert out["loss_mask"].item() == pytest.approx(plain["loss_mask"].item() + out["loss_mps"].item(), rel=1e-5)
    off = solo_losses(cates, kernels, feats, with_alt, levels, num_classes=2, mps_weight=0.0, mps_ranks=(2, 3, 4))
    assert off["loss_mask"].item() == pytest.approx(plain["loss_mask"].item(), rel=1e-6)


def test_mps_reductions_agree_with_three_ranks_and_differ_with_fewer():
    """Paper (γ = 0.25 on the mean of the ranks) and official code (0.5 × sum / 6) are the same
    number when the three ranks exist; with one rank the code's fixed /6 gives a third of it."""
    alt, valid = _alternatives(3)
    t3 = [_one_instance(alt, valid)]
    cates, kernels, feats, levels = _batch(t3)
    kw = dict(num_classes=2, mps_ranks=(2, 3, 4))
    paper = solo_losses(cates, kernels, feats, t3, levels, mps_weight=0.25, mps_reduce="mean", **kw)
    code = solo_losses(cates, kernels, feats, t3, levels, mps_weight=0.5 / 6, mps_reduce="sum", **kw)
    assert paper["loss_mps"].item() == pytest.approx(code["loss_mps"].item(), rel=1e-5)
    alt1, valid1 = _alternatives(1)
    t1 = [_one_instance(alt1, valid1)]
    paper1 = solo_losses(cates, kernels, feats, t1, levels, mps_weight=0.25, mps_reduce="mean", **kw)
    code1 = solo_losses(cates, kernels, feats, t1, levels, mps_weight=0.5 / 6, mps_reduce="sum", **kw)
    assert code1["loss_mps"].item() == pytest.approx(paper1["loss_mps"].item() / 3, rel=1e-5)


def test_mps_ranks_pick_the_alternatives_by_rank():
    alt, valid = _alternatives(3)
    t = [_one_instance(alt, valid)]
    cates, kernels, feats, levels = _batch(t)
    r2 = solo_losses(cates, kernels, feats, t, levels, num_classes=2, mps_weight=1.0, mps_ranks=(2,))
    r4 = solo_losses(cates, kernels, feats, t, levels, num_classes=2, mps_weight=1.0, mps_ranks=(4,))
    # rank r is alternatives[r - 2]: ranks 2 and 4 compare against different masks
    assert r2["loss_mps"].item() != pytest.approx(r4["loss_mps"].item(), rel=1e-3)
    beyond = solo_losses(cates, kernels, feats, t, levels, num_classes=2, mps_weight=1.0, mps_ranks=(6,))
    assert beyond["loss_mps"].item() == 0.0  # only 3 alternatives: rank 6 does not exist
