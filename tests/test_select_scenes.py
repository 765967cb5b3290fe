"""The learnable scenes of the selector benchmark: exact, non-overlapping masks, classes by
silhouette, deterministic, SAM-like bags of known kinds through the cache."""

from __future__ import annotations

import json

import cv2
import numpy as np

from pseudolabel.core.bag_sources import load_bags
from pseudolabel.core.points import derive_points
from pseudolabel.core.rle import decode_rle
from pseudolabel.testing.scenes import SHAPES, SPOTS, make_scenes, render_scene
from pseudolabel.testing.synthetic import LABELS, synthetic_bags, write_bags_cache


def test_scene_objects_are_exact_disjoint_masks_drawn_in_the_image():
    rng = np.random.default_rng(3)
    img, objects = render_scene(rng, size=96, class_by="shape", touch=1.0)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    assert 2 <= len(objects) <= 8
    union = np.zeros((96, 96), int)
    for cls, mask in objects:
        assert 0 <= cls < len(SHAPES) and mask.dtype == bool and mask.sum() > 20
        union += mask
    assert union.max() == 1  # no pixel belongs to two objects


def test_scenes_are_deterministic_and_bags_have_the_known_kinds(tmp_path):
    a, images = make_scenes(tmp_path / "a", 3, seed=1, size=96)
    b, _ = make_scenes(tmp_path / "b", 3, seed=1, size=96)
    gt = json.loads(a.read_text())
    assert gt == json.loads(b.read_text())
    assert [c["name"] for c in gt["categories"]] == list(SHAPES)
    assert (images / gt["images"][0]["file_name"]).is_file()
    points, _ = derive_points(gt, "qc", seed=0)
    bags = synthetic_bags(gt, points, seed=0)
    cache = write_bags_cache(tmp_path / "cache", points, bags, images)
    read = load_bags(cache)
    truth = {x["id"]: decode_rle(x["segmentation"]).astype(bool) for x in gt["annotations"]}
    n = 0
    for image_bags in read.values():
        for bag in image_bags:
            assert len(bag) == len(LABELS)
            whole = decode_rle(bag.rles[LABELS.index("whole")]).astype(bool)
            assert (whole == truth[bag.ann_id]).all()  # the "whole" proposal is the object itself
            n += 1
    assert n == len(gt["annotations"])


def test_spots_scenes_carry_the_class_as_a_count_of_spots():
    rng = np.random.default_rng(5)
    img, objects = render_scene(rng, size=128, class_by="spots")
    assert objects
    for cls, mask in objects:
        colours, counts = np.unique(img[mask].reshape(-1, 3), axis=0, return_counts=True)
        assert len(colours) == 2  # the body and the spots, each one plain colour
        spots = (img[mask] == colours[counts.argmin()]).all(axis=1)
        full = np.zeros(mask.shape, np.uint8)
        full[mask] = spots
        n, _ = cv2.connectedComponents(full)
        assert n - 1 == SPOTS[cls]
