"""The SAPNet training format: our export reads in the official loader, official files read in ours.

``official_loader_read`` follows ``CocoFmtDataset._parse_ann_info`` (zhaoyangwei123/SAPNet
TOV_mmdetection/mmdet/datasets/cocofmt.py l.168–323) rule by rule, so a file it accepts is one
the official training code reads unchanged.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pseudolabel.core.bag_sources import MemoryBagStore
from pseudolabel.core.bags import Bag
from pseudolabel.core.errors import InputError
from pseudolabel.core.rle import encode_masks
from pseudolabel.core.sapnet_format import bags_to_sapnet, read_sapnet
from pseudolabel.selector.select import choose_sam_top1, sam_top1_choice


def official_loader_read(data: dict, image: dict) -> dict:
    """What ``_parse_ann_info`` returns for one image, with its assertions made explicit."""
    cat_ids = [c["id"] for c in data["categories"]]
    cat2label = {c: i for i, c in enumerate(cat_ids)}
    boxes, labels, masks, true_boxes, ann_ids, ignore = [], [], [], [], [], []
    for ann in [a for a in data["annotations"] if a["image_id"] == image["id"]]:
        if ann.get("ignore", False):                                   # l.176
            continue
        bbox = [0] * 6
        if "bbox" in ann:                                              # l.178–226: bbox[0..5]
            for k in range(6):
                x, y, w, h = (ann["bbox"][k][j] for j in range(4))
                bbox[k] = [x, y, x + w, y + h]
        if ann["category_id"] not in cat_ids:                          # l.249
            continue
        if ann.get("iscrowd", False):                                  # l.253
            ignore.append(ann["true_bbox"])
            continue
        boxes.extend(bbox[:6])                                         # l.256–261
        labels.append(cat2label[ann["category_id"]])
        if "segmentation" in ann:                                      # l.266–272
            masks.extend(ann["segmentation"][k] for k in range(6))
        assert "true_bbox" in ann, "without true_bbox, w and h below are undefined"
        x1, y1, w, h = ann["true_bbox"]                                # l.276–278
        true_boxes.append([x1, y1, x1 + w, y1 + h])
        # l.279: a skip here happens after the boxes were appended and misaligns anns_id
        assert not (ann["area"] <= 0 or w < 1 or h < 1), "area > 0 and true_bbox w, h >= 1"
        ann_ids.append(ann["id"])                                      # l.288
    out = {"bboxes": np.array(boxes, dtype=np.float32).reshape(-1, 4), "labels": np.array(labels),
           "true_bboxes": np.array(true_boxes, dtype=np.float32).reshape(-1, 4), "anns_id": ann_ids,
           "masks": masks}
    # LoadAnnotations: every mask is decoded at the image size (_poly2mask)
    out["decoded"] = [mask_utils.decode(m if isinstance(m, dict) and isinstance(m["counts"], str)
                                        else mask_utils.frPyObjects(m, image["height"], image["width"]))
                      for m in masks]
    return out


def _bag(ann_id: int, k: int = 6, point=(12.0, 9.0), kinds=None) -> Bag:
    masks = np.zeros((k, 20, 30), dtype=bool)
    for i in range(k):
        masks[i, 5:10 + i, 8:14 + 2 * i] = True
    kinds = kinds or (["point"] * 3 + ["point_box"] * 3)[:k]
    boxes = np.array([[8, 5, 14 + 2 * i, 10 + i] for i in range(k)], dtype=np.float64)
    return Bag(ann_id=ann_id, image_id=1, category_id=7, point=point, boxes=boxes, rles=encode_masks(masks),
               scores=np.linspace(0.9, 0.6, k), kinds=kinds, ranks=[i % 3 for i in range(k)])


POINTS = {"images": [{"id": 1, "file_name": "a.jpg", "width": 30, "height": 20}],
          "categories": [{"id": 7, "name": "thing"}]}


def test_export_reads_in_the_official_loader_with_the_point_at_the_true_bbox_centre():
    data = json.loads(json.dumps(bags_to_sapnet(POINTS, {1: [_bag(3), _bag(4, point=(20.5, 3.25))]})))
    got = official_loader_read(data, data["images"][0])
    assert got["bboxes"].shape == (12, 4) and len(got["masks"]) == 12 and got["anns_id"] == [3, 4]
    centres = (got["true_bboxes"][:, :2] + got["true_bboxes"][:, 2:]) / 2
    np.testing.assert_allclose(centres, [[12.0, 9.0], [20.5, 3.25]])
    assert all(m.shape == (20, 30) for m in got["decoded"]) and got["decoded"][1].sum() == 6 * 8
    for ann in data["annotations"]:
        assert isinstance(ann["area"], float) and ann["area"] > 0
        assert ann["scores"] == pytest.approx([0.9, 0.84, 0.78])  # the point prompt's 3


def test_export_refuses_bags_without_exactly_six_proposals_or_point_proposals_first():
    with pytest.raises(InputError, match="exactly 6"):
        bags_to_sapnet(POINTS, {1: [_bag(3, k=3)]})
    with pytest.raises(InputError, match="point prompt"):
        bags_to_sapnet(POINTS, {1: [_bag(3, kinds=["point_box"] * 3 + ["point"] * 3)]})


def test_round_trip_keeps_scores_kinds_and_true_box(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(bags_to_sapnet(POINTS, {1: [_bag(3)]})))
    bag = read_sapnet(path)[1][0]
    np.testing.assert_allclose(bag.scores, np.linspace(0.9, 0.6, 6))
    assert bag.kinds[3] == "point_box" and bag.point == (12.0, 9.0)
    np.testing.assert_allclose(bag.true_box, [11.5, 8.5, 12.5, 9.5])


def _official_file(tmp_path, scores: bool):
    data = json.loads(json.dumps(bags_to_sapnet(POINTS, {1: [_bag(3)]})))
    ann = data["annotations"][0]
    for key in ("score", "point", "proposal_kinds", "proposal_ranks"):
        del ann[key]
    ann["true_bbox"] = [4.0, 2.0, 20.0, 10.0]  # a ground-truth-like box, as in the official files
    if scores:
        ann["scores"] = [0.5, 0.97, 0.7]
    else:
        del ann["scores"]
    path = tmp_path / "official.json"
    path.write_text(json.dumps(data))
    return path


def test_official_scores_are_read_and_sam_top1_uses_them(tmp_path, caplog):
    bags = read_sapnet(_official_file(tmp_path, scores=True))
    bag = bags[1][0]
    assert bag.point == (14.0, 7.0)  # no 'point': the centre of true_bbox, as the official code
    assert np.isnan(bag.scores[3:]).all() and "only some proposals" in caplog.text
    assert sam_top1_choice(bag).index == 1  # not the first proposal


def test_sam_top1_fails_with_one_sentence_without_scores(tmp_path):
    bags = read_sapnet(_official_file(tmp_path, scores=False))
    with pytest.raises(InputError, match="sam-top1 needs SAM.s scores"):
        choose_sam_top1(type("Ctx", (), {"store": MemoryBagStore(bags)})())
