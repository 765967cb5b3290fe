"""The SAM engine with the tiny registered type: transforms, batching, upscaling, checkpoints."""

import numpy as np
import pytest
import torch

from pseudolabel.core.errors import InputError
from pseudolabel.core.engines.base import boxes_to_input_frame, coords_to_input_frame, resized_hw, stability_score
from pseudolabel.core.engines.loading import load_model as load_sam
from pseudolabel.core.engines.loading import save_random_checkpoint
from pseudolabel.core.engines.registry import ENGINES
from pseudolabel.core.engines.sam1 import SAM_TYPES, SamEngine


def test_transforms_into_the_1024_frame_by_hand():
    assert resized_hw(480, 640) == (768, 1024)
    assert resized_hw(333, 500) == (682, 1024)  # 333 * 2.048 = 681.98 -> 682
    np.testing.assert_allclose(coords_to_input_frame([[320, 240]], (480, 640)), [[512, 384]])
    # x scales by 1024/500, y by 682/333 (the rounded size, as SAM's ResizeLongestSide does)
    np.testing.assert_allclose(coords_to_input_frame([[500, 333]], (333, 500)), [[1024, 682]])
    np.testing.assert_allclose(boxes_to_input_frame([[0, 0, 640, 480]], (480, 640)), [[0, 0, 1024, 768]])


def test_the_same_as_segment_anythings_transform():
    from segment_anything.utils.transforms import ResizeLongestSide

    t = ResizeLongestSide(1024)
    pts = np.array([[10.5, 300.25], [499.0, 0.0]])
    np.testing.assert_allclose(coords_to_input_frame(pts, (333, 500)), t.apply_coords(pts.copy(), (333, 500)))
    assert resized_hw(333, 500) == ResizeLongestSide.get_preprocess_shape(333, 500, 1024)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = np.zeros((120, 160, 3), np.uint8)
    img[20:90, 30:110] = (200, 40, 40)
    return np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)


def test_batched_decoding_equals_one_point_at_a_time(tiny_engine, image):
    emb = tiny_engine.encode(image)
    assert emb.features.shape == (1, 256, 64, 64) and emb.original_size == (120, 160)
    pts = np.array([[[50.0, 40.0]], [[100.0, 70.0]], [[10.0, 110.0]]])
    labels = np.ones((3, 1))
    low, iou = tiny_engine.decode(emb, pts, labels)
    assert low.shape == (3, 3, 256, 256) and iou.shape == (3, 3)
    for i in range(3):
        low_i, iou_i = tiny_engine.decode(emb, pts[i:i + 1], labels[i:i + 1])
        torch.testing.assert_close(low_i[0], low[i], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(iou_i[0], iou[i], atol=1e-5, rtol=1e-4)


def test_upscale_has_sams_geometry(tiny_engine, image):
    emb = tiny_engine.encode(image)
    # a linear field: bilinear sampling reproduces it exactly, so any offset or scale error shows
    ys, xs = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    low = torch.stack([xs * 0.3 - 20, ys * -0.2 + 10, xs + ys], 0)[None]
    ours = tiny_engine.upscale(low, emb, threshold=None)
    ref = tiny_engine.model.postprocess_masks(low, emb.input_size, emb.original_size)
    assert ours.shape == ref.shape == (1, 3, 120, 160)
    torch.testing.assert_close(ours[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], atol=1e-3, rtol=1e-4)


def test_upscaled_masks_agree_with_sams_postprocessing(tiny_engine, image):
    emb = tiny_engine.encode(image)
    low, _ = tiny_engine.decode(emb, np.array([[[50.0, 40.0]]]), np.ones((1, 1)))
    ours = tiny_engine.upscale(low, emb)
    ref = tiny_engine.model.postprocess_masks(low, emb.input_size, emb.original_size) > 0
    assert ours.dtype == torch.bool
    # random weights give noisy logits; one sampling vs SAM's two differs only at boundaries
    assert (ours == ref).float().mean() > 0.97


def test_stability_score_by_hand():
    logits = torch.tensor([[[-2.0, -0.5], [0.5, 2.0]]])
    # > +1: one pixel; > -1: three pixels
    assert stability_score(logits).item() == pytest.approx(1 / 3)


def test_checkpoint_file_loads_through_the_real_path(tmp_path):
    path = save_random_checkpoint("tiny", tmp_path / "tiny.pth", seed=3)
    model, sha = load_sam("tiny", path)
    assert len(sha) == 64
    ref = save_random_checkpoint("tiny", tmp_path / "again.pth", seed=3)
    for (k, v), (_, w) in zip(model.state_dict().items(), torch.load(ref, weights_only=True).items()):
        assert torch.equal(v, w), k
    with pytest.raises(InputError, match="does not fit engine sam_vit_b"):
        load_sam("vit_b", path)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(InputError, match="cannot be read"):
        load_sam("tiny", tmp_path / "junk.pth")
    with pytest.raises(InputError, match="does not exist"):
        load_sam("tiny", tmp_path / "missing.pth")


def test_offline_download_fails_with_where_to_put_the_file(tmp_path, monkeypatch):
    from dataclasses import replace

    monkeypatch.setenv("SAP_CHECKPOINT_DIR", str(tmp_path))
    # a port nothing listens on: a real failed connection, no network needed
    monkeypatch.setitem(ENGINES, "sam_vit_b", replace(ENGINES["sam_vit_b"], url="http://127.0.0.1:9/sam_vit_b_01ec64.pth"))
    with pytest.raises(InputError, match=str(tmp_path / "sam_vit_b_01ec64.pth")):
        load_sam("vit_b", None)
    assert not any(tmp_path.iterdir())  # no partial file left behind


def test_precision_and_device_errors():
    model, ckpt = load_sam("tiny", "none")
    with pytest.raises(InputError, match="precision"):
        SamEngine(model, "tiny", ckpt, "cpu", "fp8")
    with pytest.raises(InputError, match="fp16"):
        SamEngine(model, "tiny", ckpt, "cpu", "fp16")
    with pytest.raises(InputError, match="unknown engine 'vit_x'"):
        load_sam("vit_x", "none")


def test_fused_attention_computes_what_sams_attention_computes(image):
    model, ckpt = load_sam("tiny", "none")
    plain = SamEngine(model, "tiny", ckpt, "cpu", "fp32", fused_attention=False).encode(image).features
    model2, _ = load_sam("tiny", "none")
    from pseudolabel.core.engines.sam1 import use_fused_attention

    assert use_fused_attention(model2) == len(SAM_TYPES["tiny"].global_attn)
    fused = SamEngine(model2, "tiny", ckpt, "cpu", "fp32", fused_attention=False).encode(image).features
    torch.testing.assert_close(fused, plain, atol=1e-4, rtol=1e-4)
