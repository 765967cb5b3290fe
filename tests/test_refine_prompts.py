"""SAMRefiner's pure parts on small hand-built masks with known answers (no SAM)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pseudolabel.core.errors import InputError
from pseudolabel.core.rle import mask_iou
from refine.cebox import CeBoxParams, FeatureSampler, elastic_box, strip_width
from refine.cebox_official import OfficialFeatures, feature_region, nearest_indices, official_elastic_box
from pseudolabel.testing.corrupt import CorruptConfig, annotation_rng, corrupt_mask
from refine.distance import chamfer_passes, distance_maps
from refine.mask_prompt import gaussian_field, interp_matrix, mask_prompt
from refine.prompts import box_center_point, negative_point, point_of, positive_point, tight_box
from refine.refiner import PromptState, RefineConfig, build_points, parse_prompts
from refine.stm import official_split_then_merge, split_then_merge


def disk(h: int, w: int, cx: int, cy: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def l_shape() -> np.ndarray:
    """A 20×20 L in a 30×30 image: left column x 5..9 and bottom row y 20..24."""
    m = np.zeros((30, 30), dtype=bool)
    m[5:25, 5:10] = True
    m[20:25, 5:25] = True
    return m


# ---- distances, points and box ----------------------------------------------------------------

def maps_of(mask: np.ndarray, distance: str):
    return distance_maps([mask], distance)[0]


def exclusive(box) -> np.ndarray:
    """Inclusive-max box → exclusive-max box (what :mod:`refine.cebox` works with)."""
    return np.asarray(box, dtype=np.float64) + np.array([0, 0, 1, 1])


def test_chamfer_transform_steps_1_and_sqrt2_in_float32():
    d = np.full((1, 7, 9), np.float32(1e10), np.float32)
    d[0, 3, 4] = 0  # one seed
    chamfer_passes(d)
    assert d[0, 3, 7] == 3.0 and d[0, 0, 4] == 3.0
    assert d[0, 1, 2] == np.float32(np.float32(0) + np.float32(np.sqrt(2))) * 2  # two diagonal steps
    assert d[0, 0, 0] == np.float32(np.float32(np.sqrt(2)) * 3 + 1)  # 3 diagonals + 1 straight
    m = np.zeros((7, 9), bool)
    m[2:5, 3:8] = True  # FastGeodis's own output on this rectangle: 1 on the rim, 2 inside
    interior = maps_of(m, "chamfer").interior
    full = np.zeros((7, 9), np.float32)
    mp = maps_of(m, "chamfer")
    full[mp.origin[1]:mp.origin[1] + interior.shape[0], mp.origin[0]:mp.origin[0] + interior.shape[1]] = interior
    assert full[2:5, 3:8].tolist() == [[1] * 5, [1, 2, 2, 2, 1], [1] * 5] and not full[~m].any()


@pytest.mark.parametrize("distance", ["chamfer", "euclidean"])
def test_positive_point_of_a_disk_is_its_centre(distance):
    assert point_of(disk(40, 50, cx=21, cy=17, r=9), distance) == (21, 17)


@pytest.mark.parametrize("distance", ["chamfer", "euclidean"])
def test_positive_point_takes_the_first_maximum_in_row_major_order(distance):
    m = np.zeros((10, 12), dtype=bool)
    m[2:5, 3:10] = True  # 3 rows: the middle row x 4..8 all lie 2 px from the background
    assert point_of(m, distance) == (4, 3)


def test_image_border_is_background_for_euclidean_only():
    m = np.zeros((10, 10), dtype=bool)
    m[:, :3] = True  # a strip cut by the left border
    assert point_of(m, "euclidean") == (1, 1)  # its centre column
    assert point_of(m, "chamfer") == (0, 0)  # the official code: the border is no background


def test_tight_box_has_an_inclusive_max():
    m = l_shape()
    assert tight_box(m) == (5, 5, 24, 24)  # SAM's batched_mask_to_box; not 25
    assert maps_of(m, "chamfer").box == (5, 5, 24, 24) == maps_of(m, "euclidean").box


@pytest.mark.parametrize("distance", ["chamfer", "euclidean"])
def test_negative_point_of_an_l_shape_is_the_empty_corner(distance):
    mp = maps_of(l_shape(), distance)
    assert negative_point(mp, region="box") == (24, 5)  # top-right corner, 15 px from the L
    assert negative_point(mp, region="box_half_open") == (23, 5)  # the code skips the last column


def test_negative_point_fallbacks_and_the_half_open_box():
    m = np.zeros((20, 20), dtype=bool)
    m[4:9, 3:15] = True
    mp = maps_of(m, "chamfer")
    assert negative_point(mp, fallback="origin") == (0, 0)
    assert negative_point(mp, fallback="omit") is None
    m[8, 14] = False  # the only background of the box is on its last row and column
    mp = maps_of(m, "chamfer")
    assert negative_point(mp, region="box") == (14, 8)
    assert negative_point(mp, region="box_half_open", fallback="origin") == (0, 0)


def test_point_prompts_follow_the_reference():
    m = np.zeros((20, 20), dtype=bool)
    m[4:9, 3:15] = True  # fills its box
    official = build_points(PromptState(m[None], RefineConfig(engine="sam_tiny")))
    assert official["point_labels"].tolist() == [[1, 0]] and official["point_coords"][0, 1].tolist() == [0, 0]
    paper = build_points(PromptState(m[None], RefineConfig(engine="sam_tiny", reference="paper")))
    assert paper["point_labels"].tolist() == [[1, -1]]  # SAM's "not a point" padding
    override = build_points(PromptState(m[None], RefineConfig(engine="sam_tiny", negative_fallback="omit")))
    assert override["point_labels"].tolist() == [[1, -1]]
    single = build_points(PromptState(m[None], RefineConfig(engine="sam_tiny", negative_point=False)))
    assert single["point_coords"].shape == (1, 1, 2)


def test_box_centre_point_of_the_l_falls_off_the_object_where_the_distance_point_does_not():
    m = l_shape()
    cx, cy = box_center_point(m)
    assert (cx, cy) == (14, 14) and not m[cy, cx]
    x, y = point_of(m)
    assert m[y, x]


def test_prompt_kinds_come_from_the_registry_in_its_order():
    assert parse_prompts("mask,point") == ("point", "mask")
    assert parse_prompts(["box"]) == ("box",)
    with pytest.raises(InputError, match="unknown prompt kind"):
        parse_prompts("point,scribble")
    with pytest.raises(InputError):
        parse_prompts("")


# ---- Gaussian mask prompt ----------------------------------------------------------------------

def _reference_prompt(mask: np.ndarray, input_size, strength: float, gamma: float, outside: str) -> np.ndarray:
    """The mapping spelled out with torch (float32, as the official code): resize, pad, resize."""
    def path(img, pad):
        t = torch.tensor(img, dtype=torch.float32)[None, None]
        t = F.interpolate(t, input_size, mode="bilinear", align_corners=False)
        t = F.pad(t, (0, 1024 - input_size[1], 0, 1024 - input_size[0]), value=pad)
        return F.interpolate(t, (256, 256), mode="bilinear", align_corners=False)[0, 0].double().numpy()

    b = path(np.where(mask, 1.0, -1.0), -1.0)
    g = path(gaussian_field(mask, gamma), 0.0)
    g = np.where(g > 0, g, 1.0)
    return np.where(b > 0, strength, -strength) * g if outside == "gaussian" else np.where(b > 0, strength * g, -strength)


def test_interp_matrix_is_torchs_bilinear_resize():
    x = np.random.default_rng(0).standard_normal((37, 53)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x)[None, None], (683, 1024), mode="bilinear", align_corners=False)[0, 0]
    got = interp_matrix(37, 683) @ x.astype(np.float64) @ interp_matrix(53, 1024).T
    exact = F.interpolate(torch.from_numpy(x).double()[None, None], (683, 1024), mode="bilinear",
                          align_corners=False)[0, 0].numpy()  # float64 sample positions
    err = np.abs(got - want.numpy()).max()
    assert err < 1e-5 and err < np.abs(exact - want.numpy()).max()  # torch's float32 positions


@pytest.mark.parametrize("outside", ["gaussian", "constant"])
def test_gaussian_prompt_on_a_non_square_image(outside):
    h, w = 300, 500
    input_size = (614, 1024)  # ResizeLongestSide of 300×500
    m = disk(h, w, cx=200, cy=150, r=60)
    mp = maps_of(m, "chamfer")
    out = mask_prompt(m[None], [mp], input_size, strength=30.0, gamma=4.0, outside=outside)
    assert out.shape == (1, 1, 256, 256) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], _reference_prompt(m, input_size, 30.0, 4.0, outside), atol=1e-4)
    x, y = positive_point(mp)
    scale = 1024 / 500 / 4  # original pixel → 256 frame
    peak = out[0, 0, int((y + 0.5) * scale), int((x + 0.5) * scale)]
    assert peak == pytest.approx(30.0, rel=0.01)
    assert out.max() <= 30.0
    assert out[0, 0, 10, 10] == -30.0  # image, far outside the mask
    assert np.all(out[0, 0, 154:, :] == -30.0)  # padding rows (614 / 4 = 153.5)
    # just outside the outline: the official prompt is −30·g there, close to 0
    rim = out[0, 0, int(150 * scale), int((200 + 61.5) * scale)]
    assert (rim > -5.0) if outside == "gaussian" else (rim == -30.0)
    # paper amplitude, and ±1 for an object whose box grew (per object)
    two = mask_prompt(np.stack([m, m]), [mp, mp], input_size, strength=np.array([15.0, 1.0]), outside=outside)
    assert two[0].min() == -15.0 and two[0].max() == pytest.approx(15.0, rel=0.01)
    assert two[1].min() == -1.0 and two[1].max() == pytest.approx(1.0, rel=0.01)


@pytest.mark.parametrize("distance", ["chamfer", "euclidean"])
def test_gaussian_field_peaks_at_the_positive_point_and_vanishes_outside(distance):
    m = l_shape()
    g = gaussian_field(m, gamma=4.0, distance=distance)
    x, y = point_of(m, distance)
    assert g[y, x] == 1.0 and g.max() == 1.0
    assert np.all(g[~m] == 0) and np.all(g[m] > 0)
    tiny = np.zeros((9, 9), bool)
    tiny[4, 4] = True  # A/gamma = 1/4 < 1: the spread is clamped to 1, as in the code
    assert gaussian_field(tiny, 4.0, distance)[4, 4] == 1.0


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
    box = exclusive(tight_box(m))
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
    new, grew = elastic_box(exclusive(tight_box(m)), sampler.query(m), sampler)
    assert new.tolist() == [0, 0, 114, 110]
    assert grew.tolist() == [True, False, True, True]
    m2 = np.zeros((256, 256), dtype=bool)
    m2[156:256, 156:256] = True  # bottom-right corner
    new2, grew2 = elastic_box(exclusive(tight_box(m2)), sampler.query(m2), sampler)
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


def test_official_cebox_rules():
    f = _two_region_features(40)  # similar left of pixel 160
    feats = OfficialFeatures(f, (256, 256))
    assert feature_region((256, 256)) == (64, 64) and feature_region((300, 500)) == (38, 64)
    assert nearest_indices(256, 64).tolist()[:3] == [0, 4, 8]
    m = np.zeros((256, 256), dtype=bool)
    m[50:81, 10:120] = True  # inclusive box (10, 50, 119, 80)
    box, grew = official_elastic_box(m, tight_box(m), feats, margin=0.1)
    # left: int(10 − 10) = 0 is refused (the code needs 0 < edge); top: int(50 − 3.0) = 47;
    # right and bottom: the strips start on the box's own last column/row.
    assert box == (10, 47, 129, 83) and grew
    sampler = FeatureSampler(f, (256, 256), (1024, 1024))
    ours, _ = elastic_box(exclusive(tight_box(m)), sampler.query(m), sampler, CeBoxParams(margin=0.1))
    assert ours.tolist() == [0, 47, 130, 84]  # exclusive max: (0, 47, 129, 83) inclusive
    uniform = OfficialFeatures(_two_region_features(0), (256, 256))  # all alike: every allowed side grows
    assert official_elastic_box(m, tight_box(m), uniform, margin=0.5) == ((10, 47, 129, 83), True)
    speck = np.zeros((256, 256), dtype=bool)
    speck[1:3, 1:3] = True  # vanishes in the nearest-neighbour 64×64 mask: no query, no growth
    assert official_elastic_box(speck, tight_box(speck), feats, margin=0.1) == ((1, 1, 2, 2), False)


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


def test_official_stm_quirks():
    m = np.zeros((20, 200), dtype=bool)
    m[3, 3:6] = True  # a single 3-px component is kept as it is
    assert len(official_split_then_merge(m)) == 1 and split_then_merge(m) == []
    m[:] = False
    m[5, 0:10] = True
    m[5, 100:110] = True  # one row each: the code's union area (x1 − x0)(y1 − y0) is 0 → merged
    assert len(official_split_then_merge(m)) == 1
    assert len(split_then_merge(m)) == 2
    m[:] = False
    m[10:20, 10:29] = True
    m[10:20, 30:49] = True  # the halves of a split rectangle merge under both rules
    assert len(official_split_then_merge(m)) == 1 == len(split_then_merge(m))


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
