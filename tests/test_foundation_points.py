"""Point reading, derivation rules and image loading."""

import copy

import numpy as np
import pytest
from PIL import Image

from pseudolabel.core.errors import ImageError, InputError
from pseudolabel.core.images import load_image_rgb
from pseudolabel.core.points import collect_points, derive_points, point_center, point_qc, point_uniform, read_point


def _coco(anns, w=10, h=8):
    return {"images": [{"id": 1, "file_name": "a.jpg", "width": w, "height": h}],
            "categories": [{"id": 3, "name": "cat"}], "annotations": anns}


def test_both_point_conventions_are_read():
    assert read_point({"point": [2, 3]}) == (2.0, 3.0)
    assert read_point({"point_coords": [[1, 1], [4, 5]], "point_labels": [0, 1]}) == (4.0, 5.0)
    assert read_point({"bbox": [0, 0, 1, 1]}) is None
    for bad in ("12,30", [1], [1, 2, 3], ["1", 2], [True, 2], {"x": 1}):  # never read as (1.0, 2.0)
        with pytest.raises(InputError, match="two numbers"):
            read_point({"id": 7, "point": bad})
    with pytest.raises(InputError, match="labels"):
        read_point({"id": 7, "point_coords": [[1, 2]], "point_labels": [2]})


def test_collect_points_skips_crowd_and_rejects_bad_points():
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "point": [2, 2]},
            {"id": 2, "image_id": 1, "category_id": 3, "iscrowd": 1}]
    pts, report = collect_points(_coco(anns))
    assert [p.ann_id for p in pts[1]] == [1] and report.crowd_skipped == 1
    with pytest.raises(InputError, match="outside"):
        collect_points(_coco([{"id": 1, "image_id": 1, "category_id": 3, "point": [11, 2]}]))
    with pytest.raises(InputError, match="outside"):
        collect_points(_coco([{"id": 1, "image_id": 1, "category_id": 3, "point": [-1, 2]}]))
    with pytest.raises(InputError, match="no point"):
        collect_points(_coco([{"id": 1, "image_id": 1, "category_id": 3}]))
    with pytest.raises(InputError, match="category"):
        collect_points(_coco([{"id": 1, "image_id": 1, "category_id": 9, "point": [1, 1]}]))
    assert collect_points(_coco([]))[0] == {1: []}


def test_center_is_the_pixel_farthest_from_the_background():
    m = np.zeros((9, 12), np.uint8)
    m[1:8, 1:8] = 1  # a 7x7 square: centre pixel (4, 4)
    m[3:5, 8:11] = 1  # a thin arm does not move it
    assert point_center(m, np.random.default_rng(0)) == (4.5, 4.5)


def test_uniform_and_qc_stay_in_the_mask_and_qc_near_the_centre():
    m = np.zeros((100, 200), np.uint8)
    m[10:90, 20:180] = 1
    m[40:60, 90:110] = 0  # a hole at the centre
    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y = point_uniform(m, rng)
        assert m[int(y), int(x)]
        x, y = point_qc(m, rng)
        assert m[int(y), int(x)]
        # ellipse radii 0.25*w/2 = 20 and 0.25*h/2 = 10 around (100, 50), plus 0.5 px jitter
        assert ((x - 100) / 20.5) ** 2 + ((y - 50) / 10.5) ** 2 <= 1.0 + 1e-9


def test_derive_points_keeps_ids_is_seeded_and_drops_masks(coco_gt):
    gt = copy.deepcopy(coco_gt)
    gt["images"] = gt["images"][:3]
    ids = {im["id"] for im in gt["images"]}
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in ids]
    a, counts = derive_points(gt, "qc", seed=1)
    b, _ = derive_points(gt, "qc", seed=1)
    c, _ = derive_points(gt, "qc", seed=2)
    assert a == b and a != c
    n_crowd = sum(x.get("iscrowd", 0) for x in gt["annotations"])
    assert counts["points"] + counts["crowd_skipped"] + counts["empty_skipped"] == len(gt["annotations"])
    assert counts["crowd_skipped"] == n_crowd
    assert all("segmentation" not in x and "bbox" not in x for x in a["annotations"])
    assert {x["id"] for x in a["annotations"]} <= {x["id"] for x in gt["annotations"]}
    with pytest.raises(InputError, match="mode"):
        derive_points(gt, "nope")


def test_images_in_odd_formats_load_as_rgb(tmp_path):
    gray = Image.fromarray(np.full((4, 6), 100, np.uint8), "L")
    gray.save(tmp_path / "g.png")
    rgba = Image.fromarray(np.dstack([np.full((4, 6, 3), 200, np.uint8), np.full((4, 6), 255, np.uint8)]), "RGBA")
    rgba.save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 6), 65535, np.uint16)).save(tmp_path / "d.png")
    assert load_image_rgb(tmp_path / "g.png").shape == (4, 6, 3)
    assert load_image_rgb(tmp_path / "a.png")[0, 0].tolist() == [200, 200, 200]
    sixteen = load_image_rgb(tmp_path / "d.png")
    assert sixteen.dtype == np.uint8 and sixteen[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied_and_checked(tmp_path):
    arr = np.zeros((4, 6, 3), np.uint8)
    arr[0, 0] = 255  # top-left marker
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = load_image_rgb(tmp_path / "r.jpg", expected_wh=(4, 6))  # displayed: 4 wide, 6 tall
    assert out.shape == (6, 4, 3)
    assert out[0, -1].mean() > 128  # the marker went to the top-right corner
    # one rule, detectron2's: the size of the stored pixels is an error that says what happened
    with pytest.raises(ImageError, match="EXIF orientation rotates the stored 6×4 pixels"):
        load_image_rgb(tmp_path / "r.jpg", expected_wh=(6, 4))
    with pytest.raises(ImageError, match="annotation file says"):
        load_image_rgb(tmp_path / "r.jpg", expected_wh=(5, 5))


def test_missing_and_corrupt_images_raise_image_error(tmp_path):
    with pytest.raises(ImageError, match="missing"):
        load_image_rgb(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="cannot be read"):
        load_image_rgb(tmp_path / "bad.jpg")
