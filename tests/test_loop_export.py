"""`sap export`: every format through its ecosystem's library, exact masks, nothing dropped silently.

Runs on tests/data/coco_cc_by (6 CC-BY COCO photos, 36 instances). The Label Studio and CVAT
masks are decoded back with those tools' own decoders; the polygons with pycocotools.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from pseudolabel.core.coco import load_coco_json
from pseudolabel.core.rle import decode_rle, encode_mask, segmentation_to_rle
from pseudolabel.export.polygons import Part, bridge, mask_rings, rings_iou, single_ring

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "coco_cc_by"
ANN, IMAGES = DATA / "annotations.json", DATA / "images"


def _masks(coco: dict) -> dict[int, np.ndarray]:
    sizes = {i["id"]: (i["height"], i["width"]) for i in coco["images"]}
    return {a["id"]: decode_rle(segmentation_to_rle(a["segmentation"], *sizes[a["image_id"]])).astype(bool)
            for a in coco["annotations"]}


@pytest.fixture(scope="module")
def gt() -> dict:
    return load_coco_json(ANN)


@pytest.fixture
def with_defects(gt, tmp_path) -> Path:
    """The photos' annotations plus one without a mask and one with an empty mask, and scores."""
    coco = json.loads(json.dumps(gt))
    img = coco["images"][0]
    for i, a in enumerate(coco["annotations"]):
        a["score"] = round(0.5 + i / 100, 3)
        a["point"] = [a["bbox"][0] + a["bbox"][2] / 2, a["bbox"][1] + a["bbox"][3] / 2]
    coco["annotations"] += [
        {"id": 9001, "image_id": img["id"], "category_id": 1, "bbox": [0, 0, 1, 1], "area": 0, "iscrowd": 0},
        {"id": 9002, "image_id": img["id"], "category_id": 1, "iscrowd": 0, "area": 0, "bbox": [0, 0, 0, 0],
         "segmentation": encode_mask(np.zeros((img["height"], img["width"]), np.uint8))}]
    path = tmp_path / "result.json"
    path.write_text(json.dumps(coco))
    return path


# ---- polygons: pure geometry on hand-made masks --------------------------------------------------------

def test_polygons_trace_pixel_edges_bridge_holes_and_join_parts():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:7] = True
    parts, dp, dh = mask_rings(m, tolerance=0)
    assert (dp, dh) == (0, 0) and sorted(map(tuple, parts[0].outline.tolist())) == [(3, 2), (3, 5), (7, 2), (7, 5)]
    ring = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float)
    hole = np.array([[1, 1], [2, 1], [2, 2], [1, 2]], float)
    assert len(bridge(ring, hole)) == 4 + 4 + 2
    donut = np.zeros((20, 20), bool)
    donut[2:15, 2:15] = True
    donut[5:9, 5:9] = False
    donut[17:19, 17:19] = True           # a second part
    donut[10, 17] = True                  # a single pixel: a third part
    parts, _, _ = mask_rings(donut, tolerance=0)
    assert len(parts) == 3 and sorted(len(p.holes) for p in parts) == [0, 0, 1]
    assert rings_iou(donut, [single_ring(parts)]) == 1.0  # one ring, holes and parts exact
    diag = np.eye(8, dtype=bool)           # 8-connected: one part
    parts, _, _ = mask_rings(diag, tolerance=0)
    assert len(parts) == 1 and rings_iou(diag, [parts[0].outline]) == 1.0
    assert single_ring([]) is None and isinstance(parts[0], Part)


def test_coarse_tolerance_loses_small_parts_and_says_so():
    m = np.zeros((30, 30), bool)
    m[5:25, 5:25] = True
    m[1, 1] = True
    parts, dropped, _ = mask_rings(m, tolerance=3.0)
    assert len(parts) == 1 and dropped == 1


# ---- the formats -----------------------------------------------------------------------------------------

def test_labelstudio_brush_rle_decodes_to_the_same_masks_with_the_library_decoder(gt, with_defects, tmp_path, monkeypatch):
    from label_studio_converter import brush

    out = tmp_path / "tasks.json"
    assert run_cli(["export", "--to", "labelstudio", "--ann", str(with_defects), "--images", str(IMAGES),
                    "--out", str(out), "--image-root", "http://host/data"], monkeypatch) == 0
    tasks = json.loads(out.read_text())
    truth = _masks(gt)
    seen = 0
    for task in tasks:
        assert task["data"]["image"] == "http://host/data/" + task["data"]["sap_file_name"]
        for pred in task.get("predictions", []):
            regions = [r for r in pred["result"] if r["type"] == "brushlabels"]
            assert pred["score"] == min(r["score"] for r in regions)  # the task sorts by its worst object
            for r in regions:
                ann_id = int(r["id"].removeprefix("sap-"))
                h, w = r["original_height"], r["original_width"]
                decoded = np.asarray(brush.decode_rle(r["value"]["rle"])).reshape(h, w, 4)[:, :, 3] > 0
                assert np.array_equal(decoded, truth[ann_id]), ann_id
                seen += 1
    assert seen == len(truth) == 36
    config = ET.parse(out.with_suffix(".xml")).getroot()
    assert config.find("BrushLabels").get("name") == "label" and config.find("KeyPointLabels") is not None
    report = json.loads(out.with_name("tasks.report.json").read_text())
    assert report["not_represented"]["no_mask"]["ids"] == [9001]
    assert report["not_represented"]["empty_mask"]["ids"] == [9002]


def test_labelstudio_polygons_are_percent_points_with_their_iou(with_defects, tmp_path):
    from pseudolabel.export.run import ExportOptions, run_export

    report = run_export("labelstudio", with_defects, IMAGES, tmp_path / "poly.json", ExportOptions(polygons=True))
    tasks = json.loads((tmp_path / "poly.json").read_text())
    regions = [r for t in tasks for p in t.get("predictions", []) for r in p["result"] if r["type"] == "polygonlabels"]
    assert len(regions) == 36 and all(0 <= x <= 100 and 0 <= y <= 100 for r in regions for x, y in r["value"]["points"])
    assert report.extra["mean_polygon_iou"] > 0.95 and report.n_not_represented == 2


def test_cvat_xml_masks_decode_exactly_with_the_cvat_sdk(gt, with_defects, tmp_path, monkeypatch):
    from cvat_sdk.masks import decode_mask

    out = tmp_path / "annotations.xml"
    assert run_cli(["export", "--to", "cvat", "--ann", str(with_defects), "--out", str(out)], monkeypatch) == 0
    root = ET.parse(out).getroot()
    assert root.findtext("version") == "1.1"
    truth = _masks(gt)
    n = 0
    for img in root.iter("image"):
        w, h = int(img.get("width")), int(img.get("height"))
        for m in img.iter("mask"):
            left, top = int(m.get("left")), int(m.get("top"))
            runs = [int(v) for v in m.get("rle").split(",")]
            box = [left, top, left + int(m.get("width")) - 1, top + int(m.get("height")) - 1]
            attrs = {a.get("name"): a.text for a in m.iter("attribute")}
            mask = decode_mask(runs + box, image_width=w, image_height=h)
            assert np.array_equal(mask, truth[int(attrs["sap_id"])]) and float(attrs["score"]) > 0
            n += 1
    assert n == 36 and len(list(root.iter("points"))) == 36
    labels = json.loads(out.with_name("annotations.labels.json").read_text())
    assert {a["name"] for a in labels[0]["attributes"]} == {"sap_id", "score"}
    assert json.loads(out.with_name("annotations.report.json").read_text())["not_represented"]["no_mask"]["count"] == 1


def test_yolo_seg_one_normalised_polygon_per_object_and_data_yaml(gt, with_defects, tmp_path):
    import yaml

    from pseudolabel.export.run import run_export

    report = run_export("yolo-seg", with_defects, IMAGES, tmp_path / "yolo")
    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    assert data["names"][0] == cats[0]["name"] and (tmp_path / "yolo" / "images").resolve() == IMAGES.resolve()
    lines = [ln.split() for f in (tmp_path / "yolo" / "labels").glob("*.txt") for ln in f.read_text().splitlines()]
    assert len(lines) == 36 == report.objects and len(list((tmp_path / "yolo" / "labels").glob("*.txt"))) == 6
    assert all(len(ln) % 2 == 1 and all(0.0 <= float(v) <= 1.0 for v in ln[1:]) for ln in lines)
    assert report.extra["min_polygon_iou"] > 0.9 and set(report.not_represented) == {"no_mask", "empty_mask"}


def test_coco_polygons_keep_ids_and_state_their_loss(gt, with_defects, tmp_path):
    from pycocotools import mask as mask_utils

    from pseudolabel.export.run import ExportOptions, run_export

    out = tmp_path / "poly.json"
    report = run_export("coco-polygons", with_defects, None, out, ExportOptions(tolerance=0.0))
    poly = json.loads(out.read_text())
    truth = _masks(gt)
    sizes = {i["id"]: (i["height"], i["width"]) for i in poly["images"]}
    for a in poly["annotations"]:  # tolerance 0: exact
        h, w = sizes[a["image_id"]]
        m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w))).astype(bool)
        assert np.array_equal(m, truth[a["id"]]) and a["polygon_iou"] == 1.0 and "score" in a
    assert report.extra["min_polygon_iou"] == 1.0 and report.objects == 36


def test_bad_export_requests_are_one_sentence_and_exit_2(with_defects, tmp_path, monkeypatch, capsys):
    assert run_cli(["export", "--to", "pdf", "--ann", str(with_defects), "--out", str(tmp_path / "x")], monkeypatch) == 2
    assert "unknown export format 'pdf'" in capsys.readouterr().err
    assert run_cli(["export", "--to", "cvat", "--ann", str(with_defects), "--out", str(with_defects)], monkeypatch) == 2
    assert run_cli(["export", "--to", "cvat", "--ann", str(tmp_path / "none.json"), "--out", str(tmp_path / "a.xml")],
                   monkeypatch) == 2


# ---- FiftyOne: a real persistent dataset in FiftyOne's own database ---------------------------------------

FIFTYONE_CHECK = """
import json, sys
import numpy as np
import fiftyone as fo
ds = fo.load_dataset(sys.argv[1])
out = {"persistent": ds.persistent, "samples": len(ds), "fields": sorted(ds.get_field_schema()),
       "objects": sum(len(s["labels"].detections) for s in ds), "gt": sum(len(s["ground_truth"].detections) for s in ds)}
det = [d for s in ds for d in s["labels"].detections if d["sap_id"] == int(sys.argv[2])][0]
s = [s for s in ds if any(d["sap_id"] == int(sys.argv[2]) for d in s["labels"].detections)][0]
x, y, w, h = det.bounding_box
W, H = s.metadata.width, s.metadata.height
full = np.zeros((H, W), bool)
x1, y1 = round(x * W), round(y * H)
full[y1:y1 + det.mask.shape[0], x1:x1 + det.mask.shape[1]] = det.mask
out["mask_sum"], out["confidence"] = int(full.sum()), det.confidence
np.save(sys.argv[3], full)
from pseudolabel.core.errors import InputError
from pseudolabel.export.fiftyone_dataset import export_fiftyone
try:
    export_fiftyone({"images": [], "annotations": [], "categories": []}, sys.argv[1], sys.argv[4])
except InputError as e:
    out["again"] = str(e)
print(json.dumps(out))
"""


def test_fiftyone_export_is_a_persistent_dataset_in_its_own_database(gt, with_defects, tmp_path):
    pytest.importorskip("fiftyone", reason="the [fiftyone] extra is not installed (pip install 'sap[fiftyone]')")
    env = {**os.environ, "FIFTYONE_DATABASE_DIR": str(tmp_path / "db"), "FIFTYONE_DO_NOT_TRACK": "true",
           "FIFTYONE_CONFIG_PATH": str(tmp_path / "fo_config.json"), "FIFTYONE_DATABASE_VALIDATION": "false",
           "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-c", "import cli; cli.main()", "export", "--to", "fiftyone", "--ann", str(with_defects),
           "--images", str(IMAGES), "--gt", str(ANN), "--out", "sap-test"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not represented: 1 objects have no mask" in done.stdout
    target = gt["annotations"][5]["id"]
    check = subprocess.run([sys.executable, "-c", FIFTYONE_CHECK, "sap-test", str(target), str(tmp_path / "m.npy"),
                            str(IMAGES)], env=env, capture_output=True, text=True, timeout=300)  # a new process
    assert check.returncode == 0, check.stderr[-2000:]
    got = json.loads(check.stdout.strip().splitlines()[-1])
    assert got["persistent"] and got["samples"] == 6 and got["objects"] == 36 and got["gt"] == 36
    assert {"labels", "ground_truth", "points"} <= set(got["fields"])
    assert "exists; pass --overwrite" in got["again"]  # never replaced by accident
    assert np.array_equal(np.load(tmp_path / "m.npy"), _masks(gt)[target]) and got["confidence"] > 0
