"""A SAM whose encoder has a smaller frame than 1024 (the pocket SAM: 256, 16-px patches) still
shows every caller SAM's geometry: prompts in the 1024 frame, ``mask_input`` and logits 256×256.
Each test fails when the small frame puts the image, a prompt or a mask somewhere else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pseudolabel.core.engines.base import IMAGE_SIZE, LOW_RES, resized_hw
from pseudolabel.core.engines.sam1 import (
    SAM_TYPES,
    encoder_input,
    to_low_res,
    to_model_masks,
)


@pytest.fixture(scope="module")
def pocket():
    from pseudolabel.core.engines.loading import build_architecture

    return build_architecture("sam_pocket", seed=0).eval()


def _centroid(x: torch.Tensor) -> np.ndarray:
    """``(x, y)`` centre of mass of a ``H×W`` non-negative map, in pixels (centres at +0.5)."""
    w = x.double()
    ys, xs = torch.meshgrid(torch.arange(w.shape[0]) + 0.5, torch.arange(w.shape[1]) + 0.5, indexing="ij")
    return np.array([float((w * xs).sum() / w.sum()), float((w * ys).sum() / w.sum())])


def test_the_pocket_type_is_a_small_frame_and_the_released_types_are_not():
    assert SAM_TYPES["pocket"].frame < IMAGE_SIZE
    assert all(SAM_TYPES[t].frame == IMAGE_SIZE and SAM_TYPES[t].patch == 16 for t in ("vit_b", "vit_l", "vit_h", "tiny"))


def test_a_small_frame_sees_the_image_where_the_1024_frame_has_it(pocket):
    """A bright square at a known place of a 300×200 image: its centre in the encoder's 256
    input, scaled by 1024/256, is its centre in SAM's padded 1024 frame."""
    img = torch.zeros(1, 3, 200, 300)
    img[..., 40:90, 200:260] = 255.0
    size = resized_hw(200, 300)
    x = encoder_input(pocket, img, size)
    frame = pocket.image_encoder.img_size
    assert x.shape == (1, 3, frame, frame)
    bright = (x[0, 0] - 1.0).clamp(min=0)  # the square only: black is −2.1 and padding 0 here
    expected = np.array([230.0, 65.0]) * size[1] / 300  # the square's centre in the 1024 frame
    assert np.allclose(_centroid(bright) * IMAGE_SIZE / frame, expected, atol=IMAGE_SIZE / frame / 2)
    # the padding (right of and below the image) is zero after normalisation, as SAM pads
    nh = round(size[0] * frame / IMAGE_SIZE)
    assert torch.all(x[..., nh + 1:, :] == 0)


def test_masks_go_to_the_decoders_size_and_logits_come_back_at_256(pocket):
    size = tuple(pocket.prompt_encoder.mask_input_size)
    m = torch.full((2, 1, LOW_RES, LOW_RES), -3.0)
    m[:, :, :128, :] = 5.0  # the top half
    small = to_model_masks(pocket, m)
    assert small.shape == (2, 1, *size)
    assert torch.all(small[:, :, : size[0] // 2] == 5.0) and torch.all(small[:, :, size[0] // 2:] == -3.0)
    back = to_low_res(small)
    assert back.shape == (2, 1, LOW_RES, LOW_RES) and torch.equal(back > 0, m > 0)
    assert to_model_masks(pocket, None) is None
    same = torch.randn(1, 3, LOW_RES, LOW_RES)
    assert to_low_res(same) is same


def test_the_pocket_engine_answers_in_sams_frames(pocket):
    from pseudolabel.core.engines.sam1 import SamEngine

    engine = SamEngine(pocket, "sam_pocket", "none", "cpu", "fp32")
    image = np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    emb = engine.encode(image)
    g = SAM_TYPES["pocket"].frame // SAM_TYPES["pocket"].patch
    assert emb.features.shape[-2:] == (g, g) and tuple(emb.input_size) == resized_hw(120, 200)
    low, iou = engine.decode(emb, point_coords=np.array([[[50.0, 60.0]]]), point_labels=np.ones((1, 1)),
                             mask_input=np.zeros((1, 1, LOW_RES, LOW_RES), np.float32))
    assert low.shape == (1, 3, LOW_RES, LOW_RES) and iou.shape == (1, 3)
    official, ours = engine.official_upscale(low, emb), engine.upscale(low, emb, threshold=None)
    assert official.shape == ours.shape == (1, 3, 120, 200)
    # the official path (to 1024, crop, resize) and ours (one sampling) are the same geometry
    err = float((official - ours).abs().max())
    assert err <= 0.05 * float(low.abs().max()), (err, float(low.abs().max()))
