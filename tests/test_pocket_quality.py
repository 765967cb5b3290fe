"""Quality, not mechanics: the committed pocket SAM segments held-out generated scenes better than
its architecture at random init, and its IoU head ranks its masks. Each check fails when the
engine's path (loading, encoding, prompting, decoding, upscaling) breaks.

The floors sit below the figures measured on these exact scenes (README, "The pocket SAM"),
with room for the platform's float differences only. Refinement is tested where the pocket SAM
can help: on `sap corrupt --severity 2` masks (mIoU 0.57), which it raises; on severity-1 masks
(0.81, better than its own one-click masks) it lowers them, as the README reports. Selection and
SOLOv2 get no quality test yet: SAPNet does not beat sam-top1 on the pocket SAM's proposals.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from pseudolabel.evaluate import evaluate_pseudo
from pseudolabel.pocket.quality import (
    held_out_scenes,
    point_prompt_quality,
    write_scene_dataset,
)

#: floors on 6 held-out scenes (README, "The pocket SAM" has the measured figures)
MIN_BEST3_MIOU = 0.50  # measured 0.610 (random weights: 0.055)
MIN_TOP1_MIOU = 0.45  # measured 0.563 (random weights: 0.019)
MIN_SPEARMAN = 0.60  # measured 0.760 (random weights: -0.486)
#: `sap refine` on `sap corrupt --severity 2` masks of 8 held-out scenes: mask mIoU 0.573 → 0.603
MIN_REFINE_GAIN = 0.015


@pytest.fixture(scope="module")
def pocket_engine():
    import torch

    from pseudolabel.core.engines.loading import create_engine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield create_engine("sam_pocket", None, "cpu", "fp32")
    torch.set_num_threads(threads)


def test_one_click_gives_the_object_and_the_iou_head_knows_how_well(pocket_engine):
    q = point_prompt_quality(pocket_engine, held_out_scenes(6), click="center")
    assert q["n"] >= 15
    assert q["miou_best3"] >= MIN_BEST3_MIOU, q["miou_best3"]
    assert q["spearman"] >= MIN_SPEARMAN, q["spearman"]
    assert q["miou_top1"] >= MIN_TOP1_MIOU, q["miou_top1"]


def test_the_same_scenes_are_noise_to_random_weights():
    """What the floors above measure is training: SAM's architecture at random init fails them."""
    from pseudolabel.core.engines.loading import create_engine

    engine = create_engine("sam_pocket", "none", "cpu", "fp32")
    q = point_prompt_quality(engine, held_out_scenes(6), click="center")
    assert q["miou_best3"] < MIN_BEST3_MIOU - 0.03 and q["spearman"] < MIN_SPEARMAN - 0.2, q


def test_scene_datasets_are_coco_with_disjoint_visible_masks(tmp_path):
    from pseudolabel.core.rle import decode_rle

    gt_path, images = write_scene_dataset(tmp_path, 2, split="test")
    gt = json.loads(gt_path.read_text())
    assert [c["name"] for c in gt["categories"]] == ["disc", "box", "triangle", "star", "ring"]
    for im in gt["images"]:
        masks = [decode_rle(a["segmentation"]) for a in gt["annotations"] if a["image_id"] == im["id"]]
        assert masks and np.sum(masks, axis=0).max() == 1 and (images / im["file_name"]).is_file()


def test_sap_refine_raises_the_miou_of_sap_corrupt_masks(tmp_path, monkeypatch):
    """`sap corrupt` → `sap refine` (SAMRefiner's official prompts, 5 iterations) with the pocket
    SAM: the refined masks are closer to the truth than the coarse ones, object by object on
    average. Fails when the prompts, the mask prompt's frame or the best-output pick break."""
    gt_path, images = write_scene_dataset(tmp_path / "scenes", 8)
    coarse, refined = tmp_path / "coarse.json", tmp_path / "refined.json"
    assert run_cli(["corrupt", "--gt", str(gt_path), "--out", str(coarse), "--severity", "2"], monkeypatch) == 0
    assert run_cli(["refine", "--ann", str(coarse), "--images", str(images), "--out", str(refined),
                    "--engine", "sam_pocket", "--precision", "fp32", "--device", "cpu"], monkeypatch) == 0
    gt = json.loads(gt_path.read_text())
    before = evaluate_pseudo(gt, json.loads(coarse.read_text()), boundary=False)["overall"]["mask_miou"]
    after = evaluate_pseudo(gt, json.loads(refined.read_text()), boundary=False)["overall"]["mask_miou"]
    assert 0.5 < before < 0.65, before  # the corruption is what the floor was measured on
    assert after >= before + MIN_REFINE_GAIN, (before, after)
