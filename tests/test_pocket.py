"""The pocket SAM's parts: scenes, SAM's training prompts and losses, the decoder's fast path,
training's repeatability, loading through the engine registry, and who picks it (demo, env)."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch

from pseudolabel.core.errors import InputError
from pseudolabel.pocket import prompts as P
from pseudolabel.pocket.losses import mask_iou, sam_loss
from pseudolabel.pocket.scenes import make_scene


def test_scenes_are_repeatable_and_their_masks_are_what_is_visible():
    a, b = make_scene(11), make_scene(11)
    assert np.array_equal(a.image, b.image) and len(a.masks) == len(b.masks) >= 1
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    assert not np.array_equal(a.image, make_scene(12).image)
    for seed in range(6):
        s = make_scene(seed)
        assert s.image.dtype == np.uint8 and s.image.shape[2] == 3
        assert np.stack(s.masks).sum(0).max() == 1  # visible masks never overlap
        for i, part in s.parts:  # a part lies inside its object and is smaller
            assert not (part & ~s.masks[i]).any() and part.sum() < s.masks[i].sum()


def test_box_prompts_are_tight_boxes_in_the_input_frame_with_an_exclusive_max():
    t = torch.zeros(1, 256, 256, dtype=torch.bool)
    t[0, 10:20, 30:35] = True  # rows 10..19, columns 30..34
    assert P.target_boxes(t).tolist() == [[120.0, 40.0, 140.0, 80.0]]  # × 4 pixels per cell
    gen = torch.Generator().manual_seed(0)
    noisy = P.noisy_boxes(t.expand(64, -1, -1), gen)
    assert (noisy[:, 2:] > noisy[:, :2]).all() and (noisy >= 0).all() and (noisy <= 1024).all()
    assert (noisy - P.target_boxes(t)).abs().max() <= 20.0 + 1e-4  # SAM caps the noise at 20 px


def test_clicks_fall_in_the_mask_and_corrections_in_the_error_region():
    gen = torch.Generator().manual_seed(0)
    t = torch.zeros(2, 256, 256, dtype=torch.bool)
    t[:, 100:110, 50:60] = True
    pts = P.point_in_mask(t.expand(2, -1, -1), gen)[:, 0]
    cells = (pts / P.SCALE).floor().long()
    assert ((cells[:, 0] >= 50) & (cells[:, 0] < 60) & (cells[:, 1] >= 100) & (cells[:, 1] < 110)).all()
    pred = torch.zeros_like(t)
    pred[1] = t[1]
    pred[1, 0:5, 0:5] = True  # object 0: missed entirely; object 1: a false-positive blob
    pts, labels = P.correction_points(pred, t, gen)
    assert labels.tolist() == [[1], [0]]
    x, y = (pts[1, 0] / P.SCALE).floor().long().tolist()
    assert x < 5 and y < 5


def test_sam_loss_trains_only_the_best_of_the_outputs_and_the_iou_head_on_true_ious():
    t = torch.zeros(1, 8, 8, dtype=torch.bool)
    t[0, 2:6, 2:6] = True
    good = torch.where(t, 8.0, -8.0)[:, None]
    logits = torch.cat([-good, good, torch.zeros_like(good)], 1).requires_grad_()
    iou_pred = torch.tensor([[0.0, 1.0, 0.5]], requires_grad=True)
    loss, parts = sam_loss(logits, iou_pred, t)
    loss.backward()
    per_output = logits.grad.abs().flatten(2).sum(-1)[0]
    assert per_output[1] > 0 and per_output[0] == 0 and per_output[2] == 0
    assert mask_iou(logits.detach(), t)[0].tolist() == [0.0, 1.0, 0.0]
    assert parts["iou"] == 1.0
    assert iou_pred.grad[0, 2] > 0  # 0.5 predicted for a true IoU of 0 (empty output)


def test_the_decoders_fast_path_is_sams_predict_masks():
    from pseudolabel.core.engines.loading import build_architecture
    from pseudolabel.pocket.decoder import predict_masks

    model = build_architecture("sam_pocket")
    dec, c = model.mask_decoder, model.prompt_encoder.embed_dim
    g = torch.Generator().manual_seed(0)
    h, w = model.prompt_encoder.image_embedding_size
    emb = torch.randn(1, c, h, w, generator=g)
    sparse, dense = torch.randn(3, 4, c, generator=g), torch.randn(3, c, h, w, generator=g)
    pe = model.prompt_encoder.get_dense_pe()
    with torch.no_grad():
        ref = dec.predict_masks(emb, pe, sparse, dense)
        got = predict_masks(dec, emb, pe, sparse, dense)
    assert torch.allclose(ref[0], got[0], atol=1e-5) and torch.allclose(ref[1], got[1])


def test_training_is_a_function_of_the_recipe_and_resumes_to_the_same_weights(one_torch_thread):
    from pseudolabel.pocket.train import PocketConfig, train

    cfg = PocketConfig(steps=2, warmup=1, prompts_per_image=2)
    saved = []
    a = train(cfg, log=lambda line: None, save_every=1, save=lambda state: saved.append(copy.deepcopy(state)))
    resumed = train(cfg, log=lambda line: None, resume=saved[0])
    sa, sr = a.state_dict(), resumed.state_dict()
    assert saved[0]["step"] == 1 and all(torch.equal(sa[k], sr[k]) for k in sa)
    fresh = train(PocketConfig(steps=1, warmup=1, prompts_per_image=2), log=lambda line: None).state_dict()
    assert not all(torch.equal(sa[k], fresh[k]) for k in sa)


# ---- loading, and who uses it --------------------------------------------------------------------

def test_the_pocket_engine_loads_its_bundled_weights_through_the_checkpoint_path(tmp_path, monkeypatch):
    from pseudolabel.core.engines import loading
    from pseudolabel.core.engines.registry import canonical_engine, engine_spec

    spec = engine_spec("pocket")
    assert canonical_engine("pocket") == "sam_pocket" and spec.family == "sam" and spec.url is None
    path = loading.bundled_checkpoint("sam_pocket")
    assert spec.sha256 is not None and loading.sha256_of(path) == spec.sha256
    model, ckpt = loading.load_model("sam_pocket")  # no checkpoint: the bundled one
    assert ckpt == spec.sha256
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the fp16 file loads as fp32
    bad = tmp_path / "w"
    bad.mkdir()
    shutil.copy(path, bad / spec.bundled)
    with open(bad / spec.bundled, "ab") as f:
        f.write(b"x")
    monkeypatch.setattr(loading, "WEIGHTS_DIR", bad)
    with pytest.raises(InputError, match="sha256"):
        loading.load_model("sam_pocket")
    monkeypatch.setattr(loading, "WEIGHTS_DIR", tmp_path / "none")
    with pytest.raises(InputError, match="train_pocket_sam.py"):
        loading.load_model("sam_pocket")


def test_sap_env_says_the_pocket_sam_is_not_sam(tmp_path):
    from pseudolabel.core.environment import engine_lines

    line = next(x for x in engine_lines(tmp_path) if "sam_pocket" in x)
    assert "bundled" in line and "not SAM" in line and "synthetic shapes" in line


def test_the_demo_takes_a_given_checkpoint_else_official_else_pocket_else_random(tmp_path, monkeypatch):
    from pseudolabel.core.engines import loading
    from pseudolabel.pipeline.demo import POCKET_BANNER, choose_sam

    monkeypatch.setenv("SAP_CHECKPOINT_DIR", str(tmp_path / "ckpts"))
    engine, ckpt, kind = choose_sam("sam_vit_b", None, offline=True)
    assert (engine, kind) == ("sam_pocket", "pocket") and ckpt == str(loading.bundled_checkpoint("sam_pocket"))
    assert "a pocket SAM trained on synthetic shapes" in POCKET_BANNER
    real = tmp_path / "ckpts" / "sam_vit_b_01ec64.pth"
    real.parent.mkdir()
    real.write_bytes(b"")
    assert choose_sam("sam_vit_b", None, offline=True) == ("sam_vit_b", str(real), "official")
    assert choose_sam("sam_vit_b", "my.pth", offline=True) == ("sam_vit_b", "my.pth", "official")
    assert choose_sam("sam_vit_b", "none", offline=True) == ("sam_tiny", "none", "random")
    real.unlink()
    monkeypatch.setattr(loading, "WEIGHTS_DIR", tmp_path / "nothing")
    assert choose_sam("sam_vit_b", None, offline=True) == ("sam_tiny", "none", "random")


# ---- rough masks and refinement prompts in training ------------------------------------------------

def test_rough_masks_are_repeatable_never_empty_and_rough():
    from pseudolabel.pocket.degrade import rough_mask

    yy, xx = np.mgrid[:48, :64]
    disc = (xx - 30) ** 2 + (yy - 24) ** 2 <= 14 ** 2
    draws = [rough_mask(disc, np.random.default_rng(i)) for i in range(40)]
    assert np.array_equal(draws[3], rough_mask(disc, np.random.default_rng(3)))
    assert all(d.shape == disc.shape and d.dtype == bool and d.any() for d in draws)
    ious = np.array([(d & disc).sum() / (d | disc).sum() for d in draws])
    assert (ious < 0.99).all() and 0.5 < ious.mean() < 0.92, ious
    tiny = np.zeros((8, 8), bool)
    tiny[4, 4] = True  # erosion or a cut would empty it: the mask comes back instead
    assert all(rough_mask(tiny, np.random.default_rng(i)).any() for i in range(20))


def test_refinement_prompts_enter_training_in_the_1024_frame_and_the_models_mask_size(one_torch_thread):
    from pseudolabel.core.engines.loading import build_architecture
    from pseudolabel.pocket.train import PocketConfig, _coarse_first_prompt, train_step

    model = build_architecture("sam_pocket")
    seen = {}

    def prompts(rough, resized):
        seen["rough"], seen["resized"] = rough, resized
        n = len(rough)
        return {"point_coords": np.tile([[[10.0, 20.0], [0.0, 0.0]]], (n, 1, 1)),
                "point_labels": np.tile([[1, -1]], (n, 1)),
                "boxes": np.tile([[10.0, 20.0, 30.0, 40.0]], (n, 1)),
                "mask_input": np.full((n, 1, 256, 256), 2.0, np.float32)}

    masks = [np.zeros((100, 200), bool) for _ in range(2)]
    for m in masks:
        m[20:60, 30:90] = True
    coords, labels, boxes, mask_input = _coarse_first_prompt(model, masks, (512, 1024), np.random.default_rng(0),
                                                             prompts)
    assert seen["rough"].shape == (2, 100, 200) and seen["resized"] == (512, 1024)
    assert torch.allclose(coords[0, 0], torch.tensor([51.2, 102.4])) and labels[0].tolist() == [1, -1]
    assert torch.allclose(boxes[0], torch.tensor([51.2, 102.4, 153.6, 204.8]))
    assert mask_input.shape == (2, 1, 64, 64) and torch.allclose(mask_input, torch.full_like(mask_input, 2.0))
    cfg = PocketConfig(coarse_share=1.0, prompts_per_image=2)
    loss, _ = train_step(model.train(), 0, cfg, prompts)
    assert torch.isfinite(loss) and seen["rough"].shape[0] == 2
    with pytest.raises(ValueError, match="coarse_prompts"):
        train_step(model, 0, cfg)
