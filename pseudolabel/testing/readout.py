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

from pseudolabel.selector.data import BagDataset, collate
from pseudolabel.selector.losses import instance_probs
from pseudolabel.selector.mil import SelectorStep, psm_outputs


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
    parts: list[tuple[torch.Tensor, ...]] = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        if not batch.samples:
            continue
        cls, ins, valid = psm_outputs(step, batch.samples, batch.images, batch.image_hw)
        at = torch.arange(len(valid))
        labels = torch.as_tensor(np.concatenate([s.labels for s in batch.samples]))
        probs = cls.float().softmax(-1)  # P×K×C'
        share = instance_probs(ins, valid)  # P×K×C
        nan = torch.tensor(float("nan"))
        rows = (probs[at, :, labels], (probs.argmax(-1) == labels[:, None]).float(), share[at, :, labels])
        parts.append(tuple(torch.where(valid, r, nan) for r in rows))
        ann_ids.extend(a for s in batch.samples for a in s.ann_ids)
    kmax = max((p[0].shape[1] for p in parts), default=0)
    pad = [[torch.nn.functional.pad(p[j], (0, kmax - p[j].shape[1]), value=float("nan")) for p in parts]
           for j in range(3)]
    return StageZeroReadout(ann_ids, *(torch.cat(t).numpy() if t else np.zeros((0, 0), np.float32) for t in pad))
