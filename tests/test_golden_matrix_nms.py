"""Our SOLOv2 matrix NMS against AdelaiDet's on a fixed set (tests/data/golden/solov2_matrix_nms.json).

The golden file holds 10 masks of 3 classes (one exact duplicate) sorted by score, as AdelaiDet's
caller passes them, and the decayed scores of ``adet/modeling/solov2/utils.py matrix_nms`` with
the gaussian (σ 2) and linear kernels, made by scripts/make_golden_sapnet.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segtrain.postprocess import matrix_nms

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden" / "solov2_matrix_nms.json").read_text())


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_matrix_nms_matches_adelaidet(kernel):
    masks = torch.tensor(GOLDEN["masks"], dtype=torch.bool)
    labels = torch.tensor(GOLDEN["labels"])
    scores = torch.tensor(GOLDEN["scores"], dtype=torch.float32)
    ours = matrix_nms(masks, labels, scores, kernel=kernel, sigma=2.0)
    np.testing.assert_allclose(ours.numpy(), GOLDEN[kernel], rtol=1e-6, atol=1e-7)


def test_matrix_nms_is_order_free():
    """AdelaiDet needs its input sorted by score; ours sorts itself and answers in input order."""
    masks = torch.tensor(GOLDEN["masks"], dtype=torch.bool)
    labels = torch.tensor(GOLDEN["labels"])
    scores = torch.tensor(GOLDEN["scores"], dtype=torch.float32)
    perm = torch.randperm(len(scores), generator=torch.Generator().manual_seed(0))
    ours = matrix_nms(masks[perm], labels[perm], scores[perm], kernel="gaussian", sigma=2.0)
    np.testing.assert_allclose(ours.numpy(), np.array(GOLDEN["gaussian"])[perm.numpy()], rtol=1e-6, atol=1e-7)
