"""The fast SAM v1 encoder forward (the sam family's default path) against segment_anything's
own, and encoder batching through the engine interface."""

import copy
from functools import partial

import numpy as np
import pytest
import torch

from pseudolabel.core.engines import sam1_fast as sam_fast
from pseudolabel.core.engines.base import default_encoder_batch
from pseudolabel.core.engines.loading import load_model
from pseudolabel.core.engines.sam1 import SamEngine

# fp32 tolerance: the fast path sums in another order (bias after the GEMM, residual inside it,
# padding tokens' qkv as the bias row), so it agrees to float rounding, not bit for bit.
FP32_REL = 1e-5


def _encoder(width, depth, heads, global_attn, img_size, seed=0):
    """segment_anything's ImageEncoderViT with random weights and non-zero relative positions
    (SAM initialises them to zero, which would hide the bias path)."""
    from segment_anything.modeling import ImageEncoderViT

    torch.manual_seed(seed)
    enc = ImageEncoderViT(depth=depth, embed_dim=width, img_size=img_size, mlp_ratio=4,
                          norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=16,
                          qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_attn, window_size=14,
                          out_chans=256).eval()
    with torch.no_grad():
        for blk in enc.blocks:
            blk.attn.rel_pos_h.normal_(0, 0.5)
            blk.attn.rel_pos_w.normal_(0, 0.5)
        enc.pos_embed.normal_(0, 0.5)
    return enc


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@torch.inference_mode()
def _both(enc, x):
    return sam_fast.encoder_forward(enc, x), enc(x)


def test_tiny_model_at_1024_equals_segment_anything(one_torch_thread):
    model, _ = load_model("sam_tiny", "none")
    enc = model.image_encoder
    with torch.no_grad():
        for blk in enc.blocks:
            blk.attn.rel_pos_h.normal_(0, 0.5)
            blk.attn.rel_pos_w.normal_(0, 0.5)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    fast, ref = _both(enc, x)
    assert fast.shape == ref.shape == (1, 256, 64, 64) and fast.is_contiguous()
    assert _rel(fast, ref) < FP32_REL


def test_vit_b_widths_with_padded_windows_equal_segment_anything(one_torch_thread):
    # vit_b's width, depth, heads and global blocks at a 160² input: 10×10 tokens, so every
    # windowed block pads them to one 14×14 window (the padding-token path).
    enc = _encoder(768, 12, 12, (2, 5, 8, 11), img_size=160)
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(2))
    fast, ref = _both(enc, x)
    assert fast.shape == (1, 256, 10, 10)
    assert _rel(fast, ref) < FP32_REL


def test_a_batch_of_images_with_several_windows_equals_segment_anything(one_torch_thread):
    # 30×30 tokens: 3×3 windows per image, the last row and column padded; two images.
    enc = _encoder(64, 3, 2, (1,), img_size=480)
    x = torch.randn(2, 3, 480, 480, generator=torch.Generator().manual_seed(6))
    fast, ref = _both(enc, x)
    assert fast.shape == (2, 256, 30, 30)
    assert _rel(fast, ref) < FP32_REL
    assert _rel(fast[1:], ref[1:]) < FP32_REL


def test_bf16_casts_weights_once_and_is_as_close_to_fp32_as_autocast(one_torch_thread):
    enc = _encoder(64, 2, 2, (1,), img_size=256)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref32 = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = sam_fast.encoder_forward(enc, x)
            auto = enc(x)
    assert fast.dtype == torch.float32
    # SAM under autocast lands ~1e-2 from fp32 here; ours must not be worse than autocast's error
    assert _rel(fast, ref32) < max(1.5 * _rel(auto, ref32), 2e-2)
    cached = enc.__dict__["_sap_cast"][torch.bfloat16]
    assert cached.linear["blocks.0.attn.qkv"][0].dtype == torch.bfloat16


def test_a_changed_weight_is_seen_by_the_cast_copy_and_the_fp32_path(one_torch_thread):
    enc = _encoder(64, 2, 2, (1,), img_size=256)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = sam_fast.encoder_forward(enc, x)
    with torch.no_grad():
        enc.blocks[0].mlp.lin1.weight.mul_(3.0)  # in place: same storage, new version
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            after = sam_fast.encoder_forward(enc, x)
            auto = enc(x)
        fast32, ref32 = _both(enc, x)
    assert _rel(after, before) > 1e-2
    assert _rel(after, auto) < 3e-2
    assert _rel(fast32, ref32) < FP32_REL


def test_accelerate_switches_segment_anythings_encoder_and_leaves_others_alone():
    from segment_anything.modeling import ImageEncoderViT

    model, _ = load_model("sam_tiny", "none")
    assert sam_fast.accelerate(model) == "fast"
    assert model.image_encoder.forward.__func__ is sam_fast.encoder_forward

    class Other(ImageEncoderViT):  # e.g. HQ-SAM's, which also returns intermediate features
        pass

    other = copy.deepcopy(model)
    other.image_encoder.__class__ = Other
    del other.image_encoder.forward
    assert sam_fast.accelerate(other) == "plain"
    assert "forward" not in other.image_encoder.__dict__


def test_engine_encodes_through_the_fast_forward_unless_told_not_to(one_torch_thread):
    model, ckpt = load_model("sam_tiny", "none")
    img = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    engine = SamEngine(model, "sam_tiny", ckpt, "cpu", "fp32")
    assert engine.encoder_path == "fast"
    fast = engine.encode(img).features
    model2, _ = load_model("sam_tiny", "none")
    plain_engine = SamEngine(model2, "sam_tiny", ckpt, "cpu", "fp32", encoder="plain")
    plain = plain_engine.encode(img).features
    assert plain_engine.encoder_path == "plain" and "forward" not in model2.image_encoder.__dict__
    assert _rel(fast, plain) < FP32_REL
    # what the engine answers: the same logits, IoUs and masks from either embedding
    xy = np.array([[[20.0, 30.0]], [[100.0, 60.0]], [[64.0, 5.0]]])
    emb_fast, emb_plain = engine.encode(img), plain_engine.encode(img)
    low_f, iou_f = engine.decode(emb_fast, xy, np.ones((3, 1)))
    low_p, iou_p = plain_engine.decode(emb_plain, xy, np.ones((3, 1)))
    assert _rel(low_f, low_p) < FP32_REL and _rel(iou_f, iou_p) < FP32_REL
    masks_f, masks_p = engine.upscale(low_f, emb_fast), plain_engine.upscale(low_p, emb_plain)
    assert (masks_f != masks_p).float().mean() < 1e-4  # only pixels whose logit is ~0 may flip
    model3, _ = load_model("sam_tiny", "none")
    assert SamEngine(model3, "sam_tiny", ckpt, "cpu", "fp32", encoder="fused").encoder_path == "fused"
    assert "forward" not in model3.image_encoder.__dict__
    with pytest.raises(ValueError):
        SamEngine(model3, "sam_tiny", ckpt, "cpu", "fp32", encoder="quick")


def test_keeping_freed_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("SAP_KEEP_FREED_MEMORY", "0")
    assert sam_fast.keep_freed_memory() is False


def test_encoder_batch_equals_one_image_at_a_time(tiny_engine, one_torch_thread):
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, (90, 120, 3), dtype=np.uint8), rng.integers(0, 255, (140, 100, 3), dtype=np.uint8)]
    n0 = tiny_engine.timings.images
    batched = tiny_engine.encode_batch(images)
    assert tiny_engine.timings.images == n0 + 2
    for img, emb in zip(images, batched):
        one = tiny_engine.encode(img)
        assert emb.input_size == one.input_size and emb.original_size == one.original_size
        assert _rel(emb.features, one.features) < FP32_REL
    assert default_encoder_batch("cpu") == 1
    with pytest.raises(ValueError):
        tiny_engine.encode_batch([images[0], images[1][..., 0]])
