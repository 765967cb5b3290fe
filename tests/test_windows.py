"""Windows that follow the points: the layout rule on hand-made points, masks placed back as RLE,
the option's bad values, and a small object in a large generated scene (pocket SAM)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pseudolabel.core.errors import InputError
from pseudolabel.core.rle import encode_mask, rle_iou
from pseudolabel.core.windows import (Window, border_distance, check_rule_fits, layout_windows, paste_rle,
                                      window_rule)


def test_layout_puts_each_point_where_it_is_farthest_from_a_border():
    # 1000² image, 256-px windows, halo 64: cores of 128 px; a window is its core ± 64 px
    xy = np.array([[5, 5], [100, 100], [260, 10], [999, 999]])
    windows, index = layout_windows(xy, (1000, 1000), 256, 64)
    assert windows == [Window(0, 0, 256, 256), Window(192, 0, 448, 256), Window(744, 744, 1000, 1000)]
    assert index.tolist() == [0, 0, 1, 2]  # the two first points share one window
    # (260, 10): 68 px from its window's left border; the top border is the image's edge
    assert border_distance(xy[2:3], windows[1], (1000, 1000)).tolist() == [68]
    # a point in its own core is at least the halo away from every border that counts
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, [1000, 700], (200, 2))
    wins, idx = layout_windows(pts, (700, 1000), 256, 64)
    dist = np.array([border_distance(p, wins[i], (700, 1000))[0] for p, i in zip(pts, idx)])
    assert dist.min() >= 64 and all(w.hw == (256, 256) for w in wins)


def test_border_distance_ignores_the_image_edge_and_is_negative_outside():
    win = Window(0, 10, 20, 30)
    d = border_distance(np.array([[2, 20], [10, 12], [25, 20]]), win, (30, 40))
    assert d.tolist() == [10, 2, -5]  # left edge is the image's; bottom (30) too
    assert border_distance(np.array([[3, 3]]), Window(0, 0, 8, 8), (8, 8)).tolist() == [np.inf]


@pytest.mark.parametrize("origin,hw", [((0, 0), (5, 4)), ((2, 1), (6, 7)), ((0, 0), (3, 3)), ((3, 0), (3, 6))])
def test_paste_rle_equals_the_rle_of_the_pasted_mask(origin, hw):
    rng = np.random.default_rng(1)
    for fill in (0.0, 0.5, 1.0):
        m = rng.random((3, 3)) < fill
        full = np.zeros(hw, bool)
        full[origin[1]:origin[1] + 3, origin[0]:origin[0] + 3] = m
        assert paste_rle(m, origin, hw) == encode_mask(full)


def test_window_rule_values_and_bad_ones():
    assert window_rule("off", 1024).applies((9000, 9000)) is False
    auto = window_rule("auto", 256)
    assert (auto.side, auto.halo) == (256, 64)
    assert not auto.applies((300, 320)) and auto.applies((300, 321))  # beyond 1.25 frames
    assert window_rule("auto", 256, scale=0.5).side == 512
    assert window_rule("512", 256).applies((300, 513))
    with pytest.raises(InputError, match="smaller than the engine's 256 px frame"):
        window_rule("200", 256)
    with pytest.raises(InputError, match="auto, off or a window side"):
        window_rule("big", 256)
    with pytest.raises(InputError, match="--window-scale must be a positive"):
        window_rule("auto", 256, scale=0)
    with pytest.raises(InputError, match="larger than every image"):
        check_rule_fits(window_rule("4096", 1024), [(2000, 3000), (1000, 1000)])


@pytest.fixture(scope="module")
def pocket():
    from pseudolabel.core.engines.loading import create_engine

    return create_engine("sam_pocket", None, "cpu", "fp32")


def _large_scene_dataset(root, size=1024, n=6):
    from pseudolabel.core.points import point_center
    from pseudolabel.pocket.scenes import make_large_scene

    scene = make_large_scene(3, (size, size), n, diameters=(24, 40))
    (root / "images").mkdir()
    Image.fromarray(scene.image).save(root / "images" / "big.png")
    anns = []
    for i, (box, m) in enumerate(zip(scene.boxes, scene.masks)):
        x, y = point_center(m, np.random.default_rng(0))
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "point": [x + box[0], y + box[1]]})
    coco = {"images": [{"id": 1, "file_name": "big.png", "width": size, "height": size}],
            "categories": [{"id": 1, "name": "shape"}], "annotations": anns}
    (root / "points.json").write_text(json.dumps(coco))
    return scene


def _best_iou(cache_dir, scene, hw):
    from pseudolabel.core.cache import CacheReader

    with CacheReader(cache_dir) as reader:
        bags = reader.image_bags(1)
    out = []
    for bag in sorted(bags, key=lambda b: b.ann_id):
        box, m = scene.boxes[bag.ann_id - 1], scene.masks[bag.ann_id - 1]
        gt = paste_rle(m, (int(box[0]), int(box[1])), hw)
        out.append(rle_iou(bag.rles, [gt]).max())
    return np.array(out)


@pytest.fixture(scope="module")
def large_runs(tmp_path_factory, pocket):
    """A 768² scene of four 24-40 px objects and its proposals with windows off and auto (auto
    also saving embeddings): ``(folder, scene, {mode: summary})``."""
    from pseudolabel.proposals.run import ProposalConfig, run_proposals

    root = tmp_path_factory.mktemp("large")
    scene = _large_scene_dataset(root, size=768, n=4)
    runs = {}
    for mode in ("off", "auto"):
        cfg = ProposalConfig(engine="sam_pocket", prompts="point", windows=mode, overlap=False,
                             save_embeddings=mode == "auto")
        runs[mode] = run_proposals(root / "points.json", root / "images", root / mode, cfg, engine=pocket)
    return root, scene, runs


def test_a_small_object_in_a_large_scene_gets_a_mask_with_windows_and_not_without(large_runs, pocket):
    from pseudolabel.proposals.run import ProposalConfig, run_proposals

    root, scene, runs = large_runs
    ious = {}
    for mode, summary in runs.items():
        assert (summary.windows > 0) == (mode == "auto") and summary.points == len(scene.masks)
        ious[mode] = _best_iou(root / mode, scene, (768, 768))
    # the 24-40 px objects shrink to 8-13 px in the pocket SAM's 256 frame without windows
    assert ious["auto"].mean() > 0.6 and ious["auto"].min() > 0.3, ious["auto"]
    assert ious["off"].mean() < ious["auto"].mean() - 0.25, (ious["off"], ious["auto"])
    # the cache records the layout: a rerun with another one is refused like another engine
    with pytest.raises(InputError, match=r"made with windows auto \(256 px, halo 64\), not off"):
        run_proposals(root / "points.json", root / "images", root / "auto",
                      ProposalConfig(engine="sam_pocket", prompts="point", windows="off"), engine=pocket)


def test_embeddings_are_saved_per_window_and_refine_finds_each_masks_window(large_runs, pocket, tmp_path):
    from pseudolabel.core.cache import CacheReader
    from pseudolabel.core.window_cache import read_window_embeddings
    from refine.instances import run_refine
    from refine.refiner import RefineConfig

    root, scene, runs = large_runs
    with CacheReader(root / "auto") as reader:
        stored = read_window_embeddings(reader.conns, 1)
        assert reader.embedding(1) is None  # no whole-image embedding of a windowed image
    assert len(stored) == runs["auto"].windows > 0
    coco = json.loads((root / "points.json").read_text())
    for a in coco["annotations"]:  # the true masks as the coarse ones
        box, m = scene.boxes[a["id"] - 1], scene.masks[a["id"] - 1]
        a["segmentation"] = paste_rle(m, (int(box[0]), int(box[1])), (768, 768))
    (tmp_path / "coarse.json").write_text(json.dumps(coco))
    result = run_refine(tmp_path / "coarse.json", root / "images", tmp_path / "out.json",
                         RefineConfig(engine="sam_pocket", iters=1, embeddings=str(root / "auto")), engine=pocket)
    assert result.encoded == 0 and 0 < result.from_cache <= len(stored)  # every mask's window was cached


def test_a_tiled_tiff_is_read_by_window_and_an_untiled_one_refused(tmp_path, monkeypatch):
    import tifffile

    from pseudolabel.core import tiled
    from pseudolabel.core.errors import ImageError

    img = np.random.default_rng(2).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "t.tif", img, tile=(128, 128), compression="zlib", photometric="rgb")
    tifffile.imwrite(tmp_path / "s.tif", img, photometric="rgb")  # strips, not tiles
    assert tiled.open_large_image(tmp_path / "t.tif") is None  # small: decoded whole as before
    monkeypatch.setattr(tiled, "WHOLE_PIXELS", 1000)
    reader = tiled.open_large_image(tmp_path / "t.tif", (500, 300))
    for win in (Window(0, 0, 500, 300), Window(100, 120, 390, 300), Window(127, 127, 129, 129)):
        assert np.array_equal(reader.read(win), img[win.y0:win.y1, win.x0:win.x1])
    reader.close()
    monkeypatch.setattr(tiled, "_rasterio", lambda: None)  # with rasterio it is read strip by strip (test_geotiff)
    with pytest.raises(ImageError, match=r"untiled 500×300 TIFF.*needs 0.0 GiB"):
        tiled.open_large_image(tmp_path / "s.tif")
    with pytest.raises(ImageError, match="annotation file says 300×500"):
        tiled.open_large_image(tmp_path / "t.tif", (300, 500))


def test_proposals_from_a_tiled_tiff_equal_those_from_the_same_png(tmp_path, monkeypatch, pocket):
    import tifffile

    from pseudolabel.core import tiled
    from pseudolabel.core.cache import dump_cache
    from pseudolabel.proposals.run import ProposalConfig, run_proposals

    scene = _large_scene_dataset(tmp_path, size=512, n=2)
    coco = json.loads((tmp_path / "points.json").read_text())
    (tmp_path / "tif").mkdir()
    tifffile.imwrite(tmp_path / "tif" / "big.png", scene.image, tile=(128, 128), photometric="rgb")  # a TIFF named .png
    monkeypatch.setattr(tiled, "TIFF_SUFFIXES", (".png",))
    monkeypatch.setattr(tiled, "WHOLE_PIXELS", 1000)
    cfg = ProposalConfig(engine="sam_pocket", prompts="point,point_box", overlap=False, points_per_batch=2)
    run_proposals(tmp_path / "points.json", tmp_path / "images", tmp_path / "a", cfg, engine=pocket)
    summary = run_proposals(tmp_path / "points.json", tmp_path / "tif", tmp_path / "b", cfg, engine=pocket)
    assert summary.windows > 0 and len(coco["annotations"]) == summary.points
    a, b = dump_cache(tmp_path / "a"), dump_cache(tmp_path / "b")
    assert a["proposals"] == b["proposals"] and a["points"] == b["points"]



def test_large_full_resolution_chunks_give_their_freed_memory_back(pocket, monkeypatch):
    from pseudolabel.core.points import PointAnn
    from pseudolabel.proposals import decode

    calls = []
    monkeypatch.setattr(decode, "release_freed_memory", lambda: calls.append(1))
    points = [PointAnn(1, 1, 1, 100.0, 100.0), PointAnn(2, 1, 1, 900.0, 900.0)]
    small = pocket.encode(np.zeros((1024, 1024, 3), np.uint8))  # 2 points × 3 masks × 1024²: under 2^24 px
    decode.image_proposals(pocket, small, points, ("point",), 2)
    assert calls == []
    large = pocket.encode(np.zeros((2400, 2400, 3), np.uint8))  # 6 masks of 2400²: over 2^24 px
    rows = decode.image_proposals(pocket, large, points, ("point",), 2)
    assert len(calls) == 1 and len(rows) == 6  # once for the one chunk of 2 points
