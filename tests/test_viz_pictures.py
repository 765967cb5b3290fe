"""`pseudolabel.viz` and `sap viz`: PNG sizes and instance colours where the masks are."""

from __future__ import annotations

import json

import cv2
import numpy as np

from conftest import run_cli
from pseudolabel.core.bags import Bag
from pseudolabel.core.images import load_image_rgb
from pseudolabel.core.rle import decode_rle, encode_mask, mask_to_box_xyxy, segmentation_to_rle
from pseudolabel.viz import (
    Instance,
    draw_instances,
    instance_color,
    render_disagreement_sheet,
    render_overlays,
    render_side_by_side,
)

ALPHA = 0.45


def _png(path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"{path} is not a readable PNG"
    return bgr[..., ::-1]


def _masks(gt: dict, image: dict) -> dict[int, np.ndarray]:
    h, w = image["height"], image["width"]
    return {a["id"]: decode_rle(segmentation_to_rle(a["segmentation"], h, w)).astype(bool)
            for a in gt["annotations"] if a["image_id"] == image["id"]}


def _only_here(masks: dict[int, np.ndarray], ann_id: int, margin: int = 4) -> np.ndarray:
    """Pixels deep inside ``ann_id``'s mask and away from every other mask and outline."""
    k = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    inside = cv2.erode(masks[ann_id].astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    for other, m in masks.items():
        if other != ann_id:
            inside &= cv2.dilate(m.astype(np.uint8), k) == 0
    return inside


def test_colours_are_deterministic_and_distinct():
    assert instance_color(42) == instance_color(42) == instance_color("42")
    assert len({instance_color(i) for i in range(50)}) >= 45
    assert all(0 <= c <= 255 for c in instance_color(7))


def test_draw_instances_fills_outlines_and_marks_the_point():
    img = np.zeros((40, 60, 3), np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[10:30, 20:50] = True
    color = (200, 100, 50)
    out = draw_instances(img, [Instance(mask=mask, color=color, point=(35.5, 20.5))], alpha=0.5, thickness=1)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert tuple(out[15, 25]) == (100, 50, 25)  # inside: half-way between black and the colour
    assert tuple(out[10, 30]) == color  # outline pixel in solid colour
    assert tuple(out[5, 5]) == (0, 0, 0) and tuple(out[35, 55]) == (0, 0, 0)  # outside untouched
    assert tuple(out[20, 35]) == color  # the point's centre
    assert not img.any()  # the input is not modified


def test_overlays_have_image_size_and_instance_colours(small_gt, coco_dir, tmp_path):
    gt = json.loads(small_gt.read_text())
    report = render_overlays(gt, coco_dir / "images", tmp_path / "viz", limit=2, alpha=ALPHA, labels=False)
    assert not report.failed and len(report.written) == 2
    for im in gt["images"][:2]:
        path = tmp_path / "viz" / f"{im['file_name'].rsplit('.', 1)[0]}.png"
        assert path in report.written
        got = _png(path)
        assert got.shape == (im["height"], im["width"], 3)
        original = load_image_rgb(coco_dir / "images" / im["file_name"], (im["width"], im["height"])).astype(np.float64)
        masks = _masks(gt, im)
        for ann_id in masks:
            where = _only_here(masks, ann_id)
            assert where.sum() > 20, "test needs some pixels covered by this instance alone"
            expect = np.rint((1 - ALPHA) * original[where] + ALPHA * np.array(instance_color(ann_id)))
            assert np.abs(got[where].astype(np.float64) - expect).max() <= 1
        background = ~np.any(np.stack([cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
                                       for m in masks.values()]), axis=0)
        assert np.array_equal(got[background], original[background].astype(np.uint8))


def test_side_by_side_panels_and_point_detail(small_gt, coco_dir, tmp_path):
    gt = json.loads(small_gt.read_text())
    im = gt["images"][0]
    masks = _masks(gt, im)
    ann_id, mask = next(iter(masks.items()))
    x1, y1, x2, y2 = mask_to_box_xyxy(mask)
    half = mask.copy()
    half[:, : int((x1 + x2) // 2)] = False  # a "part" proposal: the right half
    bag = Bag(ann_id=ann_id, image_id=im["id"], category_id=1, point=((x1 + x2) / 2, (y1 + y2) / 2),
              boxes=np.stack([mask_to_box_xyxy(mask), mask_to_box_xyxy(half)]),
              rles=[encode_mask(mask.astype(np.uint8)), encode_mask(half.astype(np.uint8))],
              scores=[0.8, 0.95], kinds=["point", "point"], ranks=[0, 1])
    one = {**gt, "images": [im], "annotations": [a for a in gt["annotations"] if a["image_id"] == im["id"]]}
    report = render_side_by_side(coco_dir / "images", tmp_path / "sbs", gt=one, selected=one,
                                 bags={im["id"]: [bag]}, panel_width=200)
    assert not report.failed and len(report.written) == 1
    sheet = _png(report.written[0])
    assert sheet.shape[1] == 3 * 200 + 2 * 4  # proposals | selected | GT, 4-px gaps
    detail = render_side_by_side(coco_dir / "images", tmp_path / "sbs", gt=one, bags={im["id"]: [bag]},
                                 ann_ids=[ann_id], panel_width=200)
    assert detail.written == [tmp_path / "sbs" / f"ann_{ann_id}.png"]
    assert _png(detail.written[0]).shape[1] == 3 * 200 + 2 * 4  # two proposals | GT


def test_disagreement_sheet_starts_with_the_worst_image(small_gt, coco_dir, tmp_path):
    gt = json.loads(small_gt.read_text())
    other = json.loads(json.dumps(gt))
    worst = gt["images"][1]["id"]
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    for a in other["annotations"]:
        if a["image_id"] == worst:
            h, w = sizes[worst]
            a["segmentation"] = encode_mask(np.roll(decode_rle(segmentation_to_rle(a["segmentation"], h, w)), 40, axis=1))
    path, rows, report = render_disagreement_sheet(gt, other, coco_dir / "images", tmp_path / "worst.png",
                                                   n=2, cols=1, tile_width=400)
    assert rows[0]["image_id"] == worst and rows[0]["mean_iou"] < 1.0 and rows[1]["mean_iou"] == 1.0
    sheet = _png(path)
    assert sheet.shape[1] == 400 and len(rows) == 2


def test_cli_viz_overlay_and_bad_input(small_gt, coco_dir, tmp_path, monkeypatch, capsys):
    rc = run_cli(["viz", "overlay", "--ann", str(small_gt), "--images", str(coco_dir / "images"),
               "--out", str(tmp_path / "o"), "--limit", "1"], monkeypatch)
    assert rc == 0 and len(list((tmp_path / "o").glob("*.png"))) == 1
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    rc = run_cli(["viz", "disagree", str(small_gt), str(bad), "--images", str(coco_dir / "images"),
               "--out", str(tmp_path / "s.png")], monkeypatch)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    assert not (tmp_path / "s.png").exists()
