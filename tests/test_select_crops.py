"""`sap select --crops`: P2BNet's tiles around the points (pure rules on hand-made numbers) and
the crop path end to end on a large-ish generated scene."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from pseudolabel.core.errors import InputError
from pseudolabel.core.windows import Window
from pseudolabel.selector.crops import (CropRule, boxes_in_tile, crop_rule, points_inside, selection_tiles,
                                        tile_grid, training_tiles)


def test_tiles_step_by_side_minus_overlap_and_are_cut_at_the_edge():
    tiles = tile_grid(100, 20, 40, 10)  # starts 0, 30, 60, 90 in x; 0 in y
    assert tiles == [Window(0, 0, 40, 20), Window(30, 0, 70, 20), Window(60, 0, 100, 20), Window(90, 0, 100, 20)]
    assert len(tile_grid(10, 7, 4, 1)) == 4 * 3


def test_a_tile_holds_points_at_least_two_pixels_inside():
    tile = Window(10, 0, 20, 10)
    xy = np.array([[12, 5], [11.9, 5], [17.99, 5], [18, 5], [15, 1.5], [15, 7.5]])
    assert points_inside(xy, tile).tolist() == [True, False, True, False, False, True]


def test_boxes_are_clipped_moved_and_never_empty():
    tile = Window(10, 10, 20, 20)
    got = boxes_in_tile(np.array([[5, 5, 15, 15], [12, 13, 14, 18], [0, 0, 3, 3], [25, 12, 30, 14]]), tile)
    assert got.tolist() == [[0, 0, 5, 5], [2, 3, 4, 8], [0, 0, 1, 1], [9, 2, 10, 4]]


def test_training_keeps_every_tile_of_a_point_selection_the_farthest_from_a_border():
    xy = np.array([[36, 10], [95, 10], [1, 10]])
    rule = CropRule("fixed", 40, 10)
    train = [(t.as_list(), idx.tolist()) for t, idx in training_tiles(xy, 100, 20, rule)]
    # the point at x = 1 lies within 2 px of every tile's edge: it trains nowhere
    assert train == [([0, 0, 40, 20], [0]), ([30, 0, 70, 20], [0]), ([60, 0, 100, 20], [1]),
                     ([90, 0, 100, 20], [1])]
    chosen = [(t.as_list(), idx.tolist()) for t, idx in selection_tiles(xy, 100, 20, rule)]
    # (36, 10): 4 px from tile 0's right border, 6 px from tile 1's left; (95, 10): tile 2's right
    # border is the image's edge and does not count; (1, 10) is selected where it lies
    assert chosen == [([0, 0, 40, 20], [2]), ([30, 0, 70, 20], [0]), ([60, 0, 100, 20], [1])]


def test_crop_rule_parses_like_windows_and_refuses_in_one_sentence():
    assert crop_rule("auto", 800) == CropRule("auto", 800, 100)
    assert crop_rule("off", 800).mode == "off" and crop_rule(None, 800).mode == "off"
    assert crop_rule(64, 800) == CropRule("fixed", 64, 16)
    assert crop_rule("auto", 800).applies(2048, 2048, 0.39) and not crop_rule("auto", 800).applies(900, 900, 0.85)
    assert crop_rule("512", 800).applies(600, 400, 1.0) and not crop_rule("512", 800).applies(500, 400, 1.0)
    for bad in ("big", "16"):
        with pytest.raises(InputError, match="--crops"):
            crop_rule(bad, 800)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from PIL import Image

    from pseudolabel.core.points import derive_points
    from pseudolabel.core.windows import paste_rle
    from pseudolabel.pocket.scenes import make_large_scene
    from pseudolabel.testing.synthetic import synthetic_bags, write_bags_cache

    root = tmp_path_factory.mktemp("crops")
    big = make_large_scene(11, (512, 512), 6, diameters=(16, 32))
    (root / "images").mkdir()
    Image.fromarray(big.image).save(root / "images" / "big.png")
    anns = [{"id": j + 1, "image_id": 1, "category_id": 1 + j % 2, "segmentation": paste_rle(m, box[:2], (512, 512)),
             "area": int(m.sum()), "bbox": [int(v) for v in (*box[:2], *(box[2:] - box[:2]))], "iscrowd": 0}
            for j, (box, m) in enumerate(zip(big.boxes, big.masks))]
    gt = {"images": [{"id": 1, "file_name": "big.png", "width": 512, "height": 512}], "annotations": anns,
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    points, _ = derive_points(gt, "center", seed=0)
    (root / "points.json").write_text(json.dumps(points))
    bags = synthetic_bags(gt, points, seed=0)
    write_bags_cache(root / "cache", points, bags, root / "images")
    return root, big, bags


def test_crop_samples_show_the_tile_at_native_scale_with_moved_points(scene):
    from pseudolabel.selector.data import MEAN, STD, CropBagDataset

    root, big, bags = scene
    data = CropBagDataset([{"id": 1, "file_name": "big.png", "width": 512, "height": 512}], bags, root / "images",
                          {1: 0, 2: 1}, 192, 128, 0.0, 0, crop_rule("auto", 128), training=False)
    seen = []
    for i in range(len(data)):
        _, tile, _, _ = data.items[i]
        s = data[i]
        assert s.hw == tile.hw == (128, 128) and s.scale == (1.0, 1.0)
        pixels = s.image.numpy().transpose(1, 2, 0) * STD + MEAN
        assert np.abs(pixels - big.image[tile.y0:tile.y1, tile.x0:tile.x1]).max() < 1e-3
        bag_of = {b.ann_id: b for b in bags[1]}
        for a, p in zip(s.ann_ids, s.points):
            assert p == pytest.approx(np.array(bag_of[a].point) - tile.origin)
            assert points_inside(np.array([bag_of[a].point]), tile)[0]
        seen += s.ann_ids
    assert sorted(seen) == sorted(b.ann_id for b in bags[1])  # each point selected once


def test_select_with_crops_writes_the_caches_full_image_masks(scene):
    from test_select_e2e import FAST

    from pseudolabel.selector import run_select

    root, _, bags = scene
    out = root / "crops.json"
    cfg = replace(FAST, method="sapnet", crops="auto")
    summary = run_select(root / "points.json", root / "cache", out, cfg, images=root / "images")
    assert summary.written == 6 and summary.stats["images"] > 1  # trained on tiles, not the one image
    assert any("s per tile per epoch" in line for line in summary.lines())
    bag_of = {b.ann_id: b for b in bags[1]}
    for a in json.loads(out.read_text())["annotations"]:
        assert a["segmentation"]["size"] == [512, 512]
        assert a["segmentation"] == bag_of[a["id"]].rles[a["sap"]["proposal_index"]]


def test_cli_refuses_a_bad_crops_value_in_one_sentence(scene, monkeypatch, capsys):
    from conftest import run_cli

    root, _, _ = scene
    argv = ["select", "--ann", str(root / "points.json"), "--proposals", str(root / "cache"), "--images",
            str(root / "images"), "--out", str(root / "bad.json"), "--crops", "big"]
    assert run_cli(argv, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "--crops must be auto, off or a tile side in pixels" in err and "Traceback" not in err
    assert not (root / "bad.json").exists()
