"""`sap points --from FORMAT`: every labelling tool's export read into the canonical point file.

Fixtures under tests/data/formats/<tool>/ are written as each tool writes its export (sources in
each folder's SOURCE.md); the images they name are drawn here: a.png 64×48 and b.png 40×30.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pseudolabel.core.errors import InputError
from pseudolabel.core.points import collect_points
from pseudolabel.ingest import FORMATS, IngestOptions, read_points

REPO = Path(__file__).resolve().parents[1]
FORMATS_DIR = REPO / "tests" / "data" / "formats"
EXPORTS = {"labelstudio": "labelstudio/export.json", "cvat": "cvat/annotations.xml", "labelme": "labelme",
           "pointsup": "pointsup/train_point.json", "p2bnet": "p2bnet/instances_train_qc.json",
           "coco-keypoints": "coco_keypoints/person_keypoints.json"}


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    Image.new("RGB", (64, 48), (90, 120, 30)).save(d / "a.png")
    Image.new("RGB", (40, 30), (10, 20, 200)).save(d / "b.png")
    return d


def _objects(points):
    """(file, category name, clicks) of every annotation, clicks as (x, y, label)."""
    files = {im["id"]: im["file_name"] for im in points["images"]}
    names = {c["id"]: c["name"] for c in points["categories"]}
    out = []
    for a in points["annotations"]:
        clicks = [(*xy, lab) for xy, lab in zip(a["point_coords"], a["point_labels"])] if "point_coords" in a \
            else [(*a["point"], 1)]
        out.append((files[a["image_id"]], names[a["category_id"]], clicks))
    return out


EXPECTED = {
    # newest annotation (12): a cat of two clicks (parentID), a dog on the bottom border;
    # task 2 was displayed rotated 90° cw: (3, 10) of the 30×40 display is (10, 27) of b.png
    "labelstudio": [("a.png", "cat", [(8.0, 12.0, 1), (12.0, 15.0, 1), (32.0, 24.0, 0)]), ("a.png", "dog", [(48.0, 48.0, 1)]),
                    ("b.png", "dog", [(10.0, 27.0, 1)])],
    "cvat": [("a.png", "cat", [(16.0, 24.0, 1), (20.5, 26.25, 1)]), ("a.png", "dog", [(48.0, 48.0, 1)]),
             ("b.png", "dog", [(10.25, 27.75, 1)]), ("b.png", "cat", [(30.0, 5.5, 1)])],
    "labelme": [("a.png", "cat", [(16.0, 24.0, 1), (20.5, 26.25, 1)]), ("a.png", "dog", [(64.0, 48.0, 1)]),
                ("b.png", "dog", [(10.25, 27.75, 1)])],
    "pointsup": [("a.png", "cat", [(16.0, 24.0, 1), (20.5, 26.25, 1), (29.5, 31.0, 0), (11.0, 19.5, 0)]),
                 ("b.png", "dog", [(14.5, 28.0, 0), (10.25, 27.75, 1)])],
    "p2bnet": [("a.png", "cat", [(16.0, 24.0, 1)]), ("b.png", "dog", [(40.0, 30.0, 1)])],
    "coco-keypoints": [("a.png", "cat", [(15.5, 23.5, 1)]), ("b.png", "cat", [(9.5, 27.5, 1)])],
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_reads_its_fixture_exactly(fmt, images):
    points, counts = read_points(fmt, FORMATS_DIR / EXPORTS[fmt], images)
    got = _objects(points)
    want = EXPECTED[fmt]
    assert [(f, c) for f, c, _ in got] == [(f, c) for f, c, _ in want]
    for (_, _, g), (_, _, w) in zip(got, want):
        assert len(g) == len(w)
        for a, b in zip(g, w):  # pixels exactly; percentages within 1e-6 px
            assert a[2] == b[2] and abs(a[0] - b[0]) <= 1e-6 and abs(a[1] - b[1]) <= 1e-6
    by_image, _ = collect_points(points)  # every stage reads it
    first = [p for ps in by_image.values() for p in ps]
    for p, (_, _, w) in zip(sorted(first, key=lambda p: p.ann_id), want):
        assert (p.x, p.y) == pytest.approx(next(c[:2] for c in w if c[2] == 1), abs=1e-6)
    assert counts["objects"] == len(want)
    assert {im["file_name"]: (im["width"], im["height"]) for im in points["images"]} == \
        {"a.png": (64, 48), "b.png": (40, 30)}


def test_file_categories_and_a_shared_map(images, tmp_path):
    points, _ = read_points("pointsup", FORMATS_DIR / EXPORTS["pointsup"], images)
    assert points["categories"] == [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}]
    cvat, _ = read_points("cvat", FORMATS_DIR / EXPORTS["cvat"], images)
    assert [c["name"] for c in cvat["categories"]] == ["cat", "dog"]  # the XML's <labels> order
    cats = tmp_path / "cats.yaml"
    cats.write_text("cat: 3\ndog: 5\n")
    shared, _ = read_points("labelstudio", FORMATS_DIR / EXPORTS["labelstudio"], images, IngestOptions(categories=str(cats)))
    assert sorted({a["category_id"] for a in shared["annotations"]}) == [3, 5]
    coco_list = tmp_path / "cats.json"
    coco_list.write_text(json.dumps({"categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}]}))
    by_list, _ = read_points("labelme", FORMATS_DIR / "labelme", images, IngestOptions(categories=str(coco_list)))
    assert sorted({a["category_id"] for a in by_list["annotations"]}) == [7, 9]
    cats.write_text("cat: 3\n")
    with pytest.raises(InputError, match=r"labels that are not in the category map.*'dog' \(2\)"):
        read_points("labelstudio", FORMATS_DIR / EXPORTS["labelstudio"], images, IngestOptions(categories=str(cats)))


def test_labelstudio_annotator_and_cancelled(images):
    one, _ = read_points("labelstudio", FORMATS_DIR / EXPORTS["labelstudio"], images, IngestOptions(annotator="1"))
    assert [o[2] for o in _objects(one)][0] == [(16.0, 24.0, 1)]
    by_mail, _ = read_points("labelstudio", FORMATS_DIR / EXPORTS["labelstudio"], images,
                             IngestOptions(annotator="bo@example.com"))
    assert len(by_mail["annotations"]) == 2 and by_mail["annotations"][0]["point_labels"] == [1, 1, 0]  # task 1 only: task 2 has no annotation of theirs
    with pytest.raises(InputError, match="no annotation by '3'"):  # 3's annotation was cancelled
        read_points("labelstudio", FORMATS_DIR / EXPORTS["labelstudio"], images, IngestOptions(annotator="3"))


def _copy(fmt, tmp_path):
    src = FORMATS_DIR / EXPORTS[fmt]
    dst = tmp_path / "export" / src.name
    dst.parent.mkdir(parents=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    return dst


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


BAD = {
    "outside": ("p2bnet", lambda d: d["annotations"][1].update(point=[40.5, 10.0]),
                r"annotation 2 of image 2 has the point \(40.5, 10\) outside its 40×30 image"),
    "negative": ("labelme", None, r"b.json: shape 0 \(label 'dog'\) has the point \(-1, 27.75\) with a negative"),
    "percent": ("labelstudio", lambda d: d[0]["annotations"][1]["result"][0]["value"].update(x=100.5),
                r"task 1, annotation 12, region kp-b1 has x=100.5%.*0..100"),
    "rectangles": ("labelstudio", lambda d: [r.update(type="rectanglelabels") for t in d for a in t["annotations"]
                                             for r in a["result"]],
                   r"holds no keypointlabels results but 5 rectanglelabels"),
    "only_negative": ("pointsup", lambda d: d["annotations"][0].update(point_labels=[0, 0, 0, 0]),
                      r"annotation 1 has only negative clicks"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_sentence_exit_2_and_nothing_written(case, images, tmp_path):
    fmt, edit, message = BAD[case]
    export = _copy(fmt, tmp_path)
    if case == "negative":
        _edit_json(export / "b.json", lambda d: d["shapes"][0].update(points=[[-1.0, 27.75]]))
    else:
        _edit_json(export, edit)
    with pytest.raises(InputError, match=message):
        read_points(fmt, export, images)
    out = tmp_path / "points.json"
    r = subprocess.run([sys.executable, str(REPO / "cli.py"), "points", "--from", fmt, "--in", str(export),
                        "--images", str(images), "--out", str(out)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1 and str(export) in r.stderr
    assert not out.exists() and not list(tmp_path.glob("points*"))


def test_missing_and_duplicate_images_and_foreign_xml(images, tmp_path):
    export = _copy("labelme", tmp_path)
    (images / "b.png").unlink()
    with pytest.raises(InputError, match=r"b.json: its image 'b.png' is missing"):
        read_points("labelme", export, images)
    Image.new("RGB", (40, 30)).save(images / "b.png")
    (images / "sub").mkdir()
    Image.new("RGB", (40, 30)).save(images / "sub" / "b.png")
    with pytest.raises(InputError, match=r"'b.png'.*matches 2 files"):
        read_points("labelme", export, images)
    shutil.rmtree(images / "sub")
    ls = _copy("labelstudio", tmp_path / "ls")
    _edit_json(ls, lambda d: d[1]["data"].update(image="/data/upload/2/a.png"))  # another task's a.png
    with pytest.raises(InputError, match=r"different images of the export but both map to a.png"):
        read_points("labelstudio", ls, images)
    voc = tmp_path / "voc.xml"
    voc.write_text("<annotation><filename>a.png</filename><object><name>cat</name></object></annotation>")
    with pytest.raises(InputError, match=r"voc.xml is not a CVAT for images XML export \(root <annotation>"):
        read_points("cvat", voc, images)
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx"><!ENTITY y "&x;&x;&x;">]>'
                    "<annotations><version>1.1</version>&y;</annotations>")
    with pytest.raises(InputError, match=r"bomb.xml: the XML declares entities"):
        read_points("cvat", bomb, images)


def test_cvat_coco_keypoints_export_uses_every_visible_keypoint(images, tmp_path):
    export = tmp_path / "person_keypoints_default.json"
    shutil.copy(FORMATS_DIR / EXPORTS["coco-keypoints"], export)
    points, counts = read_points("cvat", export, images)
    assert [o[2] for o in _objects(points)] == [[(15.0, 23.0, 1), (20.0, 26.0, 1)], [(9.0, 27.0, 1)]]
    assert counts["objects_without_visible_keypoints"] == 1


def test_sap_points_from_writes_the_file_and_its_config(images, tmp_path):
    out = tmp_path / "points.json"
    r = subprocess.run([sys.executable, str(REPO / "cli.py"), "points", "--from", "cvat", "--in",
                        str(FORMATS_DIR / EXPORTS["cvat"]), "--images", str(images), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "4 objects (5 clicks, 0 negative) on 2 images" in r.stdout and "1 ignored box" in r.stdout
    points = json.loads(out.read_text())
    assert points["annotations"][0]["point_coords"] == [[16.0, 24.0], [20.5, 26.25]]
    assert "from: cvat" in (tmp_path / "points.config.yaml").read_text()
