"""What a trained selector's first stage (PSM) says about each proposal of each bag.

For diagnosis and for the test that the selector learns: the class probability at the point's
label, whether the class argmax is the label, and the instance share (the softmax over the bag,
``1/K`` when the instance branch has no preference), per point and proposal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data import BagDataset, collate
from .losses import instance_probs
from .mil import SelectorStep, _pad


@dataclass
class StageZeroReadout:
    """PSM outputs at each point's label, ``P×K`` float32 arrays (``K`` the largest bag; padding NaN).

    Attributes:
        ann_ids: ``P`` annotation ids, in the dataset's order.
        cls: class probability at the label (softmax over the ``C + 1`` outputs).
        correct: 1.0 where the class argmax is the label, else 0.0.
        ins: instance share at the label (softmax over the bag).
    """

    ann_ids: list[int]
    cls: np.ndarray
    correct: np.ndarray
    ins: np.ndarray

    @property
    def score(self) -> np.ndarray:
        """``cls × ins``: the PSM's selection score."""
        return self.cls * self.ins


@torch.no_grad()
def stage_zero_readout(step: SelectorStep, dataset: BagDataset, batch_size: int = 4) -> StageZeroReadout:
    """Run the PSM over every bag of ``dataset`` (no flips: build it with ``flip_prob=0``)."""
    step.eval()
    ann_ids: list[int] = []
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        if not batch.samples:
            continue
        feats = step.net.features(batch.images)
        boxes = [torch.as_tensor(np.concatenate(s.boxes), dtype=torch.float32) for s in batch.samples]
        cls, ins = step.net.forward_boxes(feats, boxes, batch.image_hw, stage=0)
        start = 0
        for s in batch.samples:
            for label, bag in zip(s.labels, s.boxes):
                k = len(bag)
                c = cls[start:start + k].float().softmax(-1)
                i = instance_probs(ins[start:start + k][None], torch.ones(1, k, dtype=torch.bool))[0]
                rows.append((c[:, label].numpy(), (c.argmax(-1) == int(label)).float().numpy(),
                             i[:, label].numpy()))
                start += k
            ann_ids.extend(s.ann_ids)
    kmax = max((len(r[0]) for r in rows), default=0)
    cls_at, correct, ins_at = ([r[j] for r in rows] for j in range(3))
    return StageZeroReadout(ann_ids, *(_pad(a, kmax, np.nan, torch.device("cpu")).numpy()
                                       for a in (cls_at, correct, ins_at)))
