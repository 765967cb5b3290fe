"""One EXIF rule in every stage (docs/formats.md, "Images and EXIF orientation"): a photo is read
as displayed, its EXIF orientation applied, by `sap proposals` and by both training engines; an
annotation file that gives the stored (un-rotated) size fails that image in one sentence, in both
engines alike.

The photo: one committed COCO photo stored rotated, with the EXIF tag that shows it upright
again (orientation 6, "rotate 90° clockwise"), and the photo's own annotations; beside it a
second photo without a tag, so that training goes on when the first fails.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, subset_coco
from pseudolabel.core.images import load_image_rgb

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DATA = Path(__file__).resolve().parent / "data" / "coco_cc_by"
TINY = ["--backbone", "resnet18", "--backbone-weights", "none", "--iters", "1", "--batch", "2", "--workers", "0",
        "--min-size", "64", "--max-size", "96", "--device", "cpu", "--keep-empty-images"]


def _stored_orientation(coco: dict) -> dict:
    """``coco`` as a tool that ignores EXIF writes it for the first image: the stored pixels'
    size, and masks drawn on the stored pixels."""
    from pycocotools import mask as mask_utils

    out = json.loads(json.dumps(coco))
    im = out["images"][0]
    im.update(width=im["height"], height=im["width"])
    for a in out["annotations"]:
        if a["image_id"] == im["id"]:
            m = np.rot90(mask_utils.decode(a["segmentation"]), k=1)
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            a["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
            a.pop("bbox", None)
    return out


@pytest.fixture(scope="module")
def rotated(tmp_path_factory, coco_gt):
    """``(folder, coco)``: the first photo of ``coco`` stored rotated with its EXIF tag."""
    d = tmp_path_factory.mktemp("exif")
    coco = subset_coco(coco_gt, 2, max_anns=3)
    (d / "images").mkdir()
    for im in coco["images"][1:]:
        (d / "images" / im["file_name"]).symlink_to(DATA / "images" / im["file_name"])
    im = coco["images"][0]
    upright = np.asarray(Image.open(DATA / "images" / im["file_name"]).convert("RGB"))
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))  # orientation 6 turns it back
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(d / "images" / im["file_name"], exif=exif, quality=95)
    (d / "gt.json").write_text(json.dumps(coco))
    (d / "stored_size.json").write_text(json.dumps(_stored_orientation(coco)))
    return d, coco


def test_the_rotated_photo_is_read_upright(rotated):
    d, coco = rotated
    im = coco["images"][0]
    got = load_image_rgb(d / "images" / im["file_name"], (im["width"], im["height"]))
    upright = np.asarray(Image.open(DATA / "images" / im["file_name"]).convert("RGB"))
    assert got.shape == upright.shape
    assert np.abs(got.astype(int) - upright.astype(int)).mean() < 4  # JPEG noise only


def test_proposals_read_the_rotated_photo_as_displayed(rotated, tmp_path, monkeypatch):
    from pseudolabel.core.points import derive_points
    from pseudolabel.proposals.run import cache_overview

    d, coco = rotated
    points, _ = derive_points(coco, "center")
    (tmp_path / "points.json").write_text(json.dumps(points))
    code = run_cli(["proposals", "--ann", str(tmp_path / "points.json"), "--images", str(d / "images"),
                    "--out", str(tmp_path / "cache"), "--engine", "sam_tiny", "--checkpoint", "none",
                    "--precision", "fp32", "--device", "cpu"], monkeypatch)
    assert code == 0
    overview = cache_overview(tmp_path / "cache")
    assert overview["images_done"] == 2 and overview["images_failed"] == []
    assert overview["points"] == len(points["annotations"])
    # the stored size is one sentence for that image (exit 1: listed as failed), not its raw pixels
    wrong = json.loads(json.dumps(points))
    wrong["images"][0].update(width=points["images"][0]["height"], height=points["images"][0]["width"])
    side = min(wrong["images"][0]["width"], wrong["images"][0]["height"])  # points inside either size
    wrong["annotations"] = [a for a in wrong["annotations"]
                            if a["image_id"] != wrong["images"][0]["id"] or max(a["point"]) < side]
    (tmp_path / "stored.json").write_text(json.dumps(wrong))
    code = run_cli(["proposals", "--ann", str(tmp_path / "stored.json"), "--images", str(d / "images"),
                    "--out", str(tmp_path / "cache2"), "--engine", "sam_tiny", "--checkpoint", "none",
                    "--precision", "fp32", "--device", "cpu"], monkeypatch)
    assert code == 1
    (failed,) = cache_overview(tmp_path / "cache2")["images_failed"]
    assert failed[0] == wrong["images"][0]["id"] and "EXIF orientation rotates the stored" in failed[1]


@pytest.mark.parametrize("engine", ["torch", "detectron2"])
def test_both_training_engines_read_it_alike(rotated, tmp_path, monkeypatch, capsys, engine):
    if engine == "detectron2" and importlib.util.find_spec("detectron2") is None:
        pytest.skip("detectron2 is not installed (CI's second step has it)")
    d, coco = rotated
    name = coco["images"][0]["file_name"]
    base = ["train", "--engine", engine, "--images", str(d / "images"), *TINY]
    code = run_cli([*base, "--train", str(d / "gt.json"), "--out", str(tmp_path / "ok")], monkeypatch)
    out, err = capsys.readouterr()
    assert code == 0, err  # displayed size: trained on the upright photo
    # the stored size: that image fails, named (detectron2's size check, our reader alike), and
    # training goes on with the other photo: exit 1
    code = run_cli([*base, "--train", str(d / "stored_size.json"), "--out", str(tmp_path / "stored")], monkeypatch)
    out, err = capsys.readouterr()
    assert code == 1 and name in out + err, out + err
    assert "Traceback" not in err
