"""The two MIL losses of SAPNet and the scores they are built from.

Shapes: ``P`` points (bags), ``K`` proposals per bag (padded; ``valid`` ``P×K`` marks real
ones), ``C`` classes. Stage 0 (PSM) has ``C + 1`` class outputs (the last one background), stage
1 (PRM) has ``C``. All functions compute in float32 whatever the input dtype (AMP-safe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6


def instance_probs(ins_logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax over each bag's proposals (``P×K×C`` → ``P×K×C``); padding gets 0."""
    logits = ins_logits.float().masked_fill(~valid[..., None], float("-inf"))
    probs = logits.softmax(dim=1)
    return torch.nan_to_num(probs, nan=0.0) * valid[..., None]


def bag_probs(cls_probs: torch.Tensor, ins_logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Bag score per class: ``Σ_k cls[k, c] · softmax_k(ins)[k, c]`` (``P×K×C`` → ``P×C``)."""
    return (cls_probs.float() * valid[..., None] * instance_probs(ins_logits, valid)).sum(dim=1)


def proposal_scores(cls_logits: torch.Tensor, ins_logits: torch.Tensor, valid: torch.Tensor,
                    labels: torch.Tensor, activation: str = "softmax") -> tuple[torch.Tensor, torch.Tensor]:
    """Selection scores at each point's label.

    Args:
        cls_logits, ins_logits: ``P×K×C'`` head outputs.
        valid: ``P×K`` bool.
        labels: ``P`` class indices.
        activation: ``"softmax"`` over the class outputs (what the official code selects with in
            both stages) or ``"sigmoid"``.

    Returns:
        ``(score, cls)``, both ``P×K``: ``cls × ins`` at the label (0 on padding) and the class
        probability at the label.
    """
    cls = cls_logits.float().softmax(dim=-1) if activation == "softmax" else cls_logits.float().sigmoid()
    # L1-normalised again as the official code does (a no-op up to rounding; the official top-1
    # box depends on the score's last bits, see official.top1_box)
    ins = F.normalize(instance_probs(ins_logits, valid), p=1, dim=1)
    idx = labels.view(-1, 1, 1).expand(-1, cls.shape[1], 1)
    cls_at = cls.gather(2, idx)[..., 0] * valid
    return cls_at * ins.gather(2, idx)[..., 0], cls_at


def psm_loss(cls_logits: torch.Tensor, ins_logits: torch.Tensor, valid: torch.Tensor,
             labels: torch.Tensor, pdg_factor: torch.Tensor | None = None,
             weight: float = 0.25) -> torch.Tensor:
    """Stage-0 MIL loss: BCE of the bag score against the one-hot label.

    Class scores are a softmax over the ``C + 1`` outputs, instance scores a softmax over the
    bag; the bag score is ``Σ_k cls·ins``. ``pdg_factor`` (``P×K``, PDG score ** (1/64)) is
    multiplied into the class *logits* first. The BCE is summed over the ``C + 1`` classes,
    averaged over the points and multiplied by ``weight``.
    """
    logits = cls_logits.float()
    if pdg_factor is not None:
        logits = logits * pdg_factor.float()[..., None]
    probs = bag_probs(logits.softmax(dim=-1), ins_logits, valid).clamp(0.0, 1.0)
    target = F.one_hot(labels, probs.shape[-1]).float()
    return weight * binary_cross_entropy(probs, target).sum() / max(len(labels), 1)


def binary_cross_entropy(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Element-wise BCE of probabilities (0 and 1 are kept finite, gradients too).

    Written out because ``F.binary_cross_entropy`` refuses to run inside a CUDA autocast region.
    """
    p, q = p.float(), q.float()
    tiny = torch.finfo(torch.float32).tiny
    return -(q * p.clamp(min=tiny).log() + (1 - q) * (1 - p).clamp(min=tiny).log())


def gfocal(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Element-wise focal BCE with a soft target: ``−(p − q)² · [q·log p + (1 − q)·log(1 − p)]``."""
    p = p.float()
    q = q.float()
    return -((p - q) ** 2) * (q * (p + EPS).log() + (1 - q) * (1 - p + EPS).log())


def prm_loss(cls_logits: torch.Tensor, ins_logits: torch.Tensor, valid: torch.Tensor,
             labels: torch.Tensor, label_weights: torch.Tensor, weight: float = 0.25) -> torch.Tensor:
    """Stage-1 MIL loss: gfocal of the bag score (sigmoid classes × softmax instances).

    Summed over the ``C`` classes, weighted per point by ``label_weights`` (the stage-0 bag score
    at the label), divided by the number of points, times ``weight``.
    """
    probs = bag_probs(cls_logits.float().sigmoid(), ins_logits, valid)
    target = F.one_hot(labels, probs.shape[-1]).float()
    per_point = gfocal(probs, target).sum(dim=1)
    return weight * (per_point * label_weights.float()).sum() / max(len(labels), 1)


def negative_loss(neg_cls_logits: torch.Tensor, num_points: int, label_weights: torch.Tensor,
                  weight: float = 0.75, norm: str = "points") -> torch.Tensor:
    """Stage-1 loss on negative boxes: gfocal with target 0 on their sigmoid class scores.

    Summed over boxes and classes, divided by the number of points (``norm="points"``, the
    official code) or of negative boxes (``"negatives"``, the paper's mean), times
    ``weight × mean(label_weights)``.
    """
    if neg_cls_logits.numel() == 0:
        return neg_cls_logits.float().sum() * 0.0
    p = neg_cls_logits.float().sigmoid()
    loss = gfocal(p, torch.zeros_like(p)).sum()
    count = num_points if norm == "points" else len(neg_cls_logits)
    return weight * label_weights.float().mean() * loss / max(count, 1)
