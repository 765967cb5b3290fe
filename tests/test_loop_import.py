"""`sap import`: corrections come back locked, and survive refine, a pipeline rerun and training.

The round trip runs the real pipeline (tiny SAM with random weights, SAM's top-1 selection, one
refine iteration) on two of the CC-BY photos: export to Label Studio → edit masks in the tasks
file as a reviewer would (brush RLE made by label-studio-converter) → import → rerun → the edited
masks are in the final JSON byte for byte.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from pseudolabel.core.coco import is_locked, load_coco_json
from pseudolabel.core.rle import decode_rle, encode_mask

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "coco_cc_by"
IMAGES = DATA / "images"


def _tiny_gt(path: Path) -> Path:
    coco = load_coco_json(DATA / "annotations.json")
    keep = {30, 86}  # 2 images, 5 objects
    coco["images"] = [i for i in coco["images"] if i["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    path.write_text(json.dumps(coco))
    return path


def _config(gt: Path, run: Path):
    from pseudolabel.pipeline import PipelineConfig

    return PipelineConfig(images=str(IMAGES), out=str(run), gt=str(gt),
                          sam={"model": "tiny", "checkpoint": "none", "precision": "fp32", "device": "cpu"},
                          proposals={"prompts": "point,point_box", "save_embeddings": True},
                          select={"method": "sam-top1"}, refine={"iters": 1})


def test_round_trip_export_edit_import_rerun_keeps_edits_byte_for_byte(tmp_path, monkeypatch, one_torch_thread):
    from label_studio_converter import brush

    from pseudolabel.pipeline import Pipeline

    gt, run = _tiny_gt(tmp_path / "gt.json"), tmp_path / "run"
    first = Pipeline(_config(gt, run)).run_stages(until="refine")
    assert [r.status for r in first] == ["ran"] * 4
    refined_path = run / "4_refine" / "refined.json"
    before = {a["id"]: a for a in load_coco_json(refined_path)["annotations"]}

    tasks_path = tmp_path / "tasks.json"
    assert run_cli(["export", "--to", "labelstudio", "--ann", str(refined_path), "--images", str(IMAGES),
                    "--out", str(tasks_path)], monkeypatch) == 0
    tasks = json.loads(tasks_path.read_text())
    edited: dict[int, np.ndarray] = {}
    deleted = None
    for task in tasks:  # the reviewer: accept the predictions, redraw two masks, delete one object
        result = copy.deepcopy(task["predictions"][0]["result"])
        brushes = [r for r in result if r["type"] == "brushlabels"]
        for k, region in enumerate(brushes):
            ann_id = int(region["id"].removeprefix("sap-"))
            h, w = region["original_height"], region["original_width"]
            if k == 0:
                m = np.zeros((h, w), np.uint8)
                m[10 + ann_id % 7:60, 20:90 + ann_id % 5] = 255
                m[30:35, 40:45] = 0  # a hole, as a brush eraser makes
                region["value"]["rle"] = brush.mask2rle(m)
                edited[ann_id] = m > 0
            elif k == 1 and deleted is None:
                deleted = ann_id
                result = [r for r in result if not r["id"].startswith(f"sap-{ann_id}")]
        task["annotations"] = [{"id": 1, "result": result, "was_cancelled": False, "updated_at": "2026-01-01"}]
    reviewed = tmp_path / "reviewed.json"
    reviewed.write_text(json.dumps(tasks))
    assert len(edited) == 2 and deleted is not None

    assert run_cli(["import", "--from", "labelstudio", str(reviewed), "--into", str(run)], monkeypatch) == 0
    corrections = {a["id"]: a for a in load_coco_json(run / "corrections.json")["annotations"]}
    assert set(corrections) == set(before) and all(is_locked(a) for a in corrections.values())

    second = {r.stage: r.status for r in Pipeline(_config(gt, run)).run_stages(until="refine")}
    assert second == {"points": "skipped", "proposals": "skipped", "select": "skipped", "refine": "ran"}
    final = {a["id"]: a for a in load_coco_json(refined_path)["annotations"]}
    raw = refined_path.read_text()
    for ann_id, m in edited.items():
        assert final[ann_id]["segmentation"] == encode_mask(m.astype(np.uint8))  # byte for byte
        assert final[ann_id]["segmentation"]["counts"] in raw and np.array_equal(decode_rle(final[ann_id]["segmentation"]), m)
        assert final[ann_id] == corrections[ann_id] and final[ann_id]["sap"]["correction"]["changed"] is True
    assert final[deleted]["segmentation"] == [] and final[deleted]["sap"]["correction"]["deleted"] is True
    accepted = set(final) - set(edited) - {deleted}
    assert accepted and all(final[i]["segmentation"] == before[i]["segmentation"] for i in accepted)

    third = Pipeline(_config(gt, run)).run_stages(until="refine")  # nothing changed: nothing redone
    assert all(r.status == "skipped" for r in third) and refined_path.read_text() == raw

    from segtrain.data import load_dataset  # `sap train` reads exactly these masks

    records, _, stats = load_dataset(refined_path, IMAGES)
    trained = {json.dumps(r, sort_keys=True) for rec in records for r in rec.rles}
    assert all(json.dumps(final[i]["segmentation"], sort_keys=True) in trained for i in edited)
    assert stats.without_mask == 1 and stats.instances == len(final) - 1

    out = tmp_path / "review"
    assert run_cli(["review", "--run", str(run), "--out", str(out), "--no-thumbnails"], monkeypatch) == 0
    queue = json.loads((out / "queue.json").read_text())["items"]
    assert all(it["done"] for it in queue) and len(queue) == len(final)


@pytest.fixture
def labels(tmp_path) -> Path:
    coco = load_coco_json(DATA / "annotations.json")
    path = tmp_path / "refined.json"
    path.write_text(json.dumps(coco))
    return path


def test_cvat_corrections_update_a_coco_file_in_place(labels, tmp_path, monkeypatch, capsys):
    from cvat_sdk.masks import encode_mask as cvat_encode

    xml = tmp_path / "annotations.xml"
    assert run_cli(["export", "--to", "cvat", "--ann", str(labels), "--out", str(xml)], monkeypatch) == 0
    root = ET.parse(xml).getroot()
    image = next(i for i in root.iter("image") if i.find("mask") is not None)
    w, h = int(image.get("width")), int(image.get("height"))
    shape = image.find("mask")
    ann_id = int(next(a.text for a in shape.iter("attribute") if a.get("name") == "sap_id"))
    m = np.zeros((h, w), bool)
    m[5:40, 7:70] = True
    enc = cvat_encode(m)
    x1, y1, x2, y2 = enc[-4:]
    shape.set("rle", ", ".join(str(v) for v in enc[:-4]))
    shape.set("left", str(x1)), shape.set("top", str(y1))
    shape.set("width", str(x2 - x1 + 1)), shape.set("height", str(y2 - y1 + 1))
    stray = ET.SubElement(image, "mask", label=shape.get("label"), rle=shape.get("rle"), left=str(x1), top=str(y1),
                          width=str(x2 - x1 + 1), height=str(y2 - y1 + 1))  # a new object, no sap_id
    assert stray is not None
    ET.ElementTree(root).write(xml)
    assert run_cli(["import", "--from", "cvat", str(xml), "--into", str(labels)], monkeypatch) == 0
    text = capsys.readouterr().out
    assert "1 changed, 35 accepted as they were" in text and "1 new objects without an id of ours" in text
    after = {a["id"]: a for a in load_coco_json(labels)["annotations"]}
    assert len(after) == 36 and all(is_locked(a) for a in after.values())
    assert after[ann_id]["segmentation"] == encode_mask(m.astype(np.uint8))
    assert "alternatives" not in after[ann_id] and after[ann_id]["bbox"] == [7.0, 5.0, 63.0, 35.0]


def test_coco_corrections_and_what_is_refused(labels, tmp_path, monkeypatch, capsys):
    coco = load_coco_json(labels)
    fix = {"images": coco["images"], "categories": coco["categories"], "annotations": [
        {**coco["annotations"][0], "category_id": coco["categories"][2]["id"]},   # relabelled
        {**coco["annotations"][1], "id": 99999},                                   # unknown id
        {**coco["annotations"][2], "image_id": coco["annotations"][0]["image_id"]
         if coco["annotations"][2]["image_id"] != coco["annotations"][0]["image_id"] else coco["images"][-1]["id"]}]}
    src = tmp_path / "fix.json"
    src.write_text(json.dumps(fix))
    assert run_cli(["import", "--from", "coco", str(src), "--into", str(labels)], monkeypatch) == 0
    text = capsys.readouterr().out
    assert "1 changed" in text and "1 ids unknown to the target" in text and "1 objects on another image" in text
    after = {a["id"]: a for a in load_coco_json(labels)["annotations"]}
    first = coco["annotations"][0]["id"]
    assert after[first]["category_id"] == coco["categories"][2]["id"] and is_locked(after[first])
    assert sum(is_locked(a) for a in after.values()) == 1
    assert run_cli(["import", "--from", "paper", str(src), "--into", str(labels)], monkeypatch) == 2
    assert "unknown source 'paper'" in capsys.readouterr().err
    assert run_cli(["import", "--from", "coco", str(src), "--into", str(tmp_path / "nowhere")], monkeypatch) == 2
    assert run_cli(["import", "--from", "labelstudio", str(src), "--into", str(labels)], monkeypatch) == 2
