"""SOLOv2 learns: ResNet-18 from random weights memorises two real COCO images.

The run is cut to fit the CPU test budget (about a minute on two busy cores): two landscape
photos (6 instances of 3 classes, objects of 45-290 px; one orientation, so each pass of 2 holds
both), short side 160, narrow heads (FPN and towers of
64 channels, two convs per tower) and 100 iterations of batch 2 at lr 0.02 without flips. The
architecture, losses, target assignment, schedule and inference are the real ones.

Thresholds, measured on this setting (deterministic for a given machine; other CPUs change the
rounding, not the trend):
* loss: the mean of iterations 81-100 is about 0.21× that of iterations 1-20; we require ≤ 0.4×.
* mask AP50 on the training images: about 67 after training; we require ≥ 30. The same model
  before training, with its score thresholds lowered (0.1 → 0.005, and 0.05 → 0 after matrix
  NMS) so that it outputs its 100 best candidates per image (its category scores start at the
  0.01 prior), scores about 0; we require ≤ 5. A model that does not learn masks and classes cannot pass both.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import subset_coco
from pseudolabel.core.cocoeval import coco_mask_ap
from segtrain.data import load_dataset
from segtrain import TrainConfig, run_train
from segtrain.model import SOLOv2, SOLOv2Config
from segtrain.predict import run_inference

pytestmark = pytest.mark.usefixtures("one_torch_thread")


NARROW = dict(fpn_channels=64, head_channels=64, head_convs=2, mask_channels=32, kernel_dim=64)


def test_resnet18_learns_masks_of_two_coco_images(coco_gt, coco_dir, tmp_path):
    gt = tmp_path / "gt.json"
    # two landscape photos: every pass of 2 (grouped by orientation) holds both
    landscape = dict(coco_gt, images=[im for im in coco_gt["images"] if im["width"] > im["height"]])
    gt.write_text(json.dumps(subset_coco(landscape, 2, max_anns=4)))
    images = coco_dir / "images"
    cfg = TrainConfig(train=str(gt), images=str(images), out=str(tmp_path / "run"), val=str(gt),
                      val_images=str(images), backbone="resnet18", backbone_weights="none", iters=100, batch=2,
                      base_lr=0.02, base_batch=2, min_size="160", max_size=267, flip_prob=0.0, workers=0,
                      log_period=20, checkpoint_period=0, model=NARROW)

    # the untrained model, as training starts it (same seed), made to output every candidate
    records, cats, _ = load_dataset(gt, images)
    torch.manual_seed(cfg.seed)
    untrained = SOLOv2(SOLOv2Config(num_classes=len(cats.ids), backbone="resnet18", backbone_norm="gn", **NARROW))
    untrained.cfg.inference.score_thr = 0.005
    untrained.cfg.inference.update_thr = 0.0
    results, _ = run_inference(untrained, records, cats, min_size=160, max_size=267)
    assert results, "the untrained baseline must output candidates to be a fair reference"
    before = coco_mask_ap(gt, results)

    summary = run_train(cfg)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    after = json.loads((tmp_path / "run" / "final_eval.json").read_text())

    print(f"loss per 20 iterations {losses}; AP50 before {before['AP50']:.1f}, after {after['AP50']:.1f}")
    assert len(losses) == 5
    assert losses[-1] <= 0.4 * losses[0], losses
    assert before["AP50"] <= 5.0, before
    assert after["AP50"] >= 30.0, after
    assert summary.final_eval == {k: after[k] for k in summary.final_eval}
