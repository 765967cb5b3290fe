"""SAMRefiner's pure parts on small hand-built masks with known answers (no SAM)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pseudolabel.core.errors import InputError
from pseudolabel.core.rle import mask_iou
from refine.cebox import CeBoxParams, FeatureSampler, elastic_box, strip_width
from refine.corrupt import CorruptConfig, annotation_rng, corrupt_mask
from refine.mask_prompt import gaussian_field, mask_prompt
from refine.prompts import box_center_point, negative_point, positive_point, tight_box
from refine.refiner import PromptState, RefineConfig, build_points, parse_prompts
from refine.stm import split_then_merge


def disk(h: int, w: int, cx: int, cy: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def l_shape() -> np.ndarray:
    """A 20×20 L in a 30×30 image: left column x 5..9 and bottom row y 20..24."""
    m = np.zeros((30, 30), dtype=bool)
    m[5:25, 5:10] = True
    m[20:25, 5:25] = True
    return m


# ---- points and box ----------------------------------------------------------------------------

def test_positive_point_of_a_disk_is_its_centre():
    assert positive_point(disk(40, 50, cx=21, cy=17, r=9)) == (21, 17)


def test_positive_point_takes_the_first_maximum_in_row_major_order():
    m = np.zeros((10, 12), dtype=bool)
    m[2:5, 3:10] = True  # 3 rows: the middle row x 4..8 all lie 2 px from the background
    assert positive_point(m) == (4, 3)


def test_positive_point_treats_the_image_border_as_background():
    m = np.zeros((10, 10), dtype=bool)
    m[:, :3] = True  # a strip cut by the left border: its centre column, not the edge
    assert positive_point(m) == (1, 1)


def test_negative_point_of_an_l_shape_is_the_empty_corner():
    m = l_shape()
    assert tuple(tight_box(m)) == (5, 5, 25, 25)
    assert negative_point(m) == (24, 5)  # top-right corner, 15 px from the L


def test_mask_filling_its_box_has_no_negative_point_unless_asked_for_the_code_fallback():
    m = np.zeros((20, 20), dtype=bool)
    m[4:9, 3:15] = True
    assert negative_point(m) is None
    assert negative_point(m, fallback="origin") == (0, 0)
    cfg = RefineConfig(model="tiny")
    pts = build_points(PromptState(m[None], cfg))
    assert pts["point_labels"].tolist() == [[1, -1]]  # SAM's "not a point" padding
    origin = build_points(PromptState(m[None], RefineConfig(model="tiny", negative_fallback="origin")))
    assert origin["point_labels"].tolist() == [[1, 0]] and origin["point_coords"][0, 1].tolist() == [0, 0]
    single = build_points(PromptState(m[None], RefineConfig(model="tiny", negative_point=False)))
    assert single["point_coords"].shape == (1, 1, 2)


def test_box_centre_point_of_the_l_falls_off_the_object_where_the_distance_point_does_not():
    m = l_shape()
    cx, cy = box_center_point(m)
    assert not m[cy, cx]
    x, y = positive_point(m)
    assert m[y, x]


def test_prompt_kinds_come_from_the_registry_in_its_order():
    assert parse_prompts("mask,point") == ("point", "mask")
    assert parse_prompts(["box"]) == ("box",)
    with pytest.raises(InputError, match="unknown prompt kind"):
        parse_prompts("point,scribble")
    with pytest.raises(InputError):
        parse_prompts("")


# ---- Gaussian mask prompt ----------------------------------------------------------------------

def _reference_prompt(mask: np.ndarray, input_size, strength: float, gamma: float) -> np.ndarray:
    """The mapping spelled out with torch: resize, pad to 1024, resize to 256."""
    def path(img, pad):
        t = torch.tensor(img, dtype=torch.float64)[None, None]
        t = F.interpolate(t, input_size, mode="bilinear", align_corners=False)
        t = F.pad(t, (0, 1024 - input_size[1], 0, 1024 - input_size[0]), value=pad)
        return F.interpolate(t, (256, 256), mode="bilinear", align_corners=False)[0, 0].numpy()

    b = path(np.where(mask, 1.0, -1.0), -1.0)
    g = path(gaussian_field(mask, gamma), 0.0)
    return np.where(b > 0, strength * np.where(g > 0, g, 1.0), -strength)


def test_gaussian_prompt_on_a_non_square_image():
    h, w = 300, 500
    input_size = (614, 1024)  # ResizeLongestSide of 300×500
    m = disk(h, w, cx=200, cy=150, r=60)
    out = mask_prompt(m[None], input_size, strength=30.0, gamma=4.0)
    assert out.shape == (1, 1, 256, 256) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], _reference_prompt(m, input_size, 30.0, 4.0), atol=1e-4)
    x, y = positive_point(m)
    scale = 1024 / 500 / 4  # original pixel → 256 frame
    peak = out[0, 0, int((y + 0.5) * scale), int((x + 0.5) * scale)]
    assert peak == pytest.approx(30.0, rel=0.01)
    assert out.max() <= 30.0
    assert out[0, 0, 10, 10] == -30.0  # image, outside the mask
    assert np.all(out[0, 0, 154:, :] == -30.0)  # padding rows (614 / 4 = 153.5)
    # paper amplitude, and ±1 for an object whose box grew
    two = mask_prompt(np.stack([m, m]), input_size, strength=np.array([15.0, 1.0]))
    assert two[0].min() == -15.0 and two[0].max() == pytest.approx(15.0, rel=0.01)
    assert two[1].min() == -1.0 and two[1].max() == pytest.approx(1.0, rel=0.01)


def test_gaussian_field_peaks_at_the_positive_point_and_vanishes_outside():
    m = l_shape()
    g = gaussian_field(m, gamma=4.0)
    x, y = positive_point(m)
    assert g[y, x] == 1.0 and g.max() == 1.0
    assert np.all(g[~m] == 0) and np.all(g[m] > 0)


# ---- CEBox -------------------------------------------------------------------------------------

def _two_region_features(split_cell: int = 30) -> np.ndarray:
    """256×64×64 features: e1 left of ``split_cell`` (in x), −e1 from it on."""
    f = np.zeros((256, 64, 64), dtype=np.float32)
    f[0, :, :split_cell] = 1.0
    f[0, :, split_cell:] = -1.0
    f[1] = 0.05  # not exactly collinear, still clearly (dis)similar
    return f


def test_cebox_grows_only_towards_similar_features():
    # 256×256 image: resized ×4, one feature cell = 4 px; −e1 from pixel 120 on.
    sampler = FeatureSampler(_two_region_features(30), (256, 256), (1024, 1024))
    m = np.zeros((256, 256), dtype=bool)
    m[100:200, 20:120] = True
    box = tight_box(m)
    assert strip_width(box[2] - box[0], CeBoxParams()) == 10
    new, grew = elastic_box(box, sampler.query(m), sampler, CeBoxParams(margin=0.1))
    assert new.tolist() == [10, 90, 120, 210]  # left, top, bottom grew 10 px; right (dissimilar) did not
    assert grew.tolist() == [True, True, False, True]
    off, grew_off = elastic_box(box, sampler.query(m), sampler, CeBoxParams(margin=0.0))
    assert off.tolist() == box.tolist() and not grew_off.any()


def test_cebox_never_passes_the_image_border():
    sampler = FeatureSampler(_two_region_features(64), (256, 256), (1024, 1024))  # all similar
    m = np.zeros((256, 256), dtype=bool)
    m[0:100, 4:104] = True  # touches the top border, 4 px from the left one
    new, grew = elastic_box(tight_box(m), sampler.query(m), sampler)
    assert new.tolist() == [0, 0, 114, 110]
    assert grew.tolist() == [True, False, True, True]
    m2 = np.zeros((256, 256), dtype=bool)
    m2[156:256, 156:256] = True  # bottom-right corner
    new2, grew2 = elastic_box(tight_box(m2), sampler.query(m2), sampler)
    assert new2.tolist() == [146, 146, 256, 256] and grew2.tolist() == [True, True, False, False]


def test_feature_query_is_the_mean_of_the_upsampled_features():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((8, 64, 64)).astype(np.float32)
    h, w, input_size = 40, 60, (683, 1024)
    sampler = FeatureSampler(f, (h, w), input_size)
    m = disk(h, w, cx=30, cy=20, r=8)
    # brute force: each pixel's bilinear sample of the normalised grid via grid_sample
    fn = f / np.linalg.norm(f, axis=0, keepdims=True)
    xs = (np.arange(w) + 0.5) * input_size[1] / w / 1024 * 2 - 1
    ys = (np.arange(h) + 0.5) * input_size[0] / h / 1024 * 2 - 1
    grid = torch.tensor(np.stack(np.meshgrid(xs, ys), -1), dtype=torch.float32)[None]
    up = F.grid_sample(torch.tensor(fn)[None], grid, mode="bilinear", padding_mode="border",
                       align_corners=False)[0].numpy()
    q = up[:, m].mean(axis=1)
    np.testing.assert_allclose(sampler.query(m), q / np.linalg.norm(q), atol=1e-5)
    sim = sampler.similarity(q / np.linalg.norm(q), 5, 9, 10, 30)
    ref = np.einsum("c,cyx->yx", q / np.linalg.norm(q), up[:, 5:9, 10:30]) / np.linalg.norm(up[:, 5:9, 10:30], axis=0)
    np.testing.assert_allclose(sim, ref, atol=1e-5)


# ---- split-then-merge --------------------------------------------------------------------------

def test_stm_merges_the_two_halves_of_a_split_object():
    m = np.zeros((60, 80), dtype=bool)
    m[10:30, 10:29] = True
    m[10:30, 30:49] = True  # a 1-px gap splits a 20×39 rectangle
    regions = split_then_merge(m)
    assert len(regions) == 1 and regions[0].sum() == m.sum()


def test_stm_keeps_far_apart_objects_apart_and_drops_specks():
    m = np.zeros((60, 200), dtype=bool)
    m[10:20, 10:20] = True
    m[10:20, 150:160] = True
    m[50:52, 100:102] = True  # 4 px: dropped
    regions = split_then_merge(m)
    assert len(regions) == 2
    assert regions[0][10:20, 10:20].all() and regions[1][10:20, 150:160].all()
    assert not any(r[50:52, 100:102].any() for r in regions)
    m[50:52, 100:103] = True  # 6 px: kept, on its own
    assert len(split_then_merge(m)) == 3


def test_stm_merge_is_8_connected():
    m = np.zeros((10, 10), dtype=bool)
    m[2:5, 2:5] = True
    m[5:8, 5:8] = True  # touches diagonally only
    assert len(split_then_merge(m)) == 1


# ---- corruption --------------------------------------------------------------------------------

def test_corrupt_is_seeded_and_degrades_moderately():
    m = disk(120, 160, cx=80, cy=60, r=35)
    cfg = CorruptConfig()
    a = corrupt_mask(m, annotation_rng(3, 17), cfg)
    b = corrupt_mask(m, annotation_rng(3, 17), cfg)
    c = corrupt_mask(m, annotation_rng(4, 17), cfg)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 0.5 < mask_iou(a, m) < 0.99
    stronger = np.mean([mask_iou(corrupt_mask(m, annotation_rng(s, 1), CorruptConfig(severity=2.0)), m)
                        for s in range(4)])
    milder = np.mean([mask_iou(corrupt_mask(m, annotation_rng(s, 1), CorruptConfig(severity=0.5)), m)
                      for s in range(4)])
    assert stronger < milder
