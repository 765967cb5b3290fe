"""The selector on the pocket SAM's proposals, trained through the real path on the pocket backbone.

Held-out pocket scenes (the ``test`` split, never drawn by the pocket SAM's or the pocket
backbone's training), points at the mask centres, the pocket SAM's proposals (``point,point_box``,
6 a point) and `run_select` with sapnet (official rules, half the benchmark's epochs; transductive:
it trains on the points it then selects for, as `sap select` does).

Which floor the measurement supports (docs/selector.md, "A quality floor in the suite"): none above
sam-top1, and none that a random-weight backbone fails. On these 8 scenes sapnet on the pocket
backbone (the benchmark's 12 epochs) picks 0.521 mask mIoU against sam-top1 0.548 and a random
pick 0.506, and the same run on random weights 0.554; on 16 scenes per seed the two backbones
trade places too (0.534 against 0.498, 0.485 against 0.521). SAPNet's box rules cap even a
perfect network 0.04-0.08 above sam-top1 on these bags. So the test holds what was measured: the
picks stay at a random pick's level (masks that no longer match their images, empty or shifted,
fall well below), and the trained selector keeps what the pocket backbone knows: its body, under
the pocket classifier head, still names held-out object crops (a random-weight body does not),
which fails when the selector drops or resets the pretrained weights or their BatchNorm
statistics.
"""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from pseudolabel.core.backbones import fetch_resnet_weights
from pseudolabel.core.points import derive_points
from pseudolabel.core.resnet_fpn import resnet_body
from pseudolabel.evaluate import evaluate_pseudo
from pseudolabel.pocket.backbone import CLASSES, BackboneConfig, accuracy, crop_batch
from pseudolabel.pocket.quality import write_scene_dataset
from pseudolabel.proposals.run import ProposalConfig, run_proposals
from pseudolabel.selector import SelectConfig, run_select
from pseudolabel.selector.train import build_model, load_checkpoint, load_net_state

SCENES = 8
#: the benchmark's schedule (scripts/bench_pocket_select.py) at half its epochs: 6 epochs of 2 batches
CFG = SelectConfig(method="sapnet", backbone="resnet18_half", backbone_weights="pocket", epochs=6, batch_size=4,
                   lr=0.08, min_size=160, max_size=224, warmup_iters=5, workers=0)
MIN_MIOU = 0.50  # measured 0.515 (12 epochs: 0.521); a random pick 0.506, sam-top1 0.548
MIN_CROPS = 0.80  # held-out crops named by the trained body: measured 0.898 (random weights 0.227)


def test_sapnet_on_the_pocket_backbone_picks_at_a_random_picks_level_and_keeps_what_the_backbone_knows(tmp_path):
    from pseudolabel.core.engines.loading import create_engine

    gt_path, images = write_scene_dataset(tmp_path / "data", SCENES, seed=0, split="test")
    gt = json.loads(gt_path.read_text())
    ann = tmp_path / "points.json"
    ann.write_text(json.dumps(derive_points(gt, "center")[0]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic on every machine
    try:
        engine = create_engine("sam_pocket", None, "cpu", "fp32")
        run_proposals(ann, images, tmp_path / "cache", ProposalConfig(prompts="point,point_box"), engine=engine)
        cfg = replace(CFG, work_dir=str(tmp_path / "work"))
        run_select(ann, tmp_path / "cache", tmp_path / "pseudo.json", cfg, images=images)
        cats = [c["id"] for c in gt["categories"]]
        state = load_checkpoint(tmp_path / "work" / "selector.pt", cats, cfg)
        step = build_model(replace(cfg, backbone_weights="checkpoint"), len(cats), state["backbone_norm"])
        load_net_state(step, state)
        crops = [crop_batch(BackboneConfig(batch=64), "test", i) for i in range(2)]
        torch.manual_seed(0)
        classifier = resnet_body(cfg.backbone, torch.nn.BatchNorm2d, num_classes=len(CLASSES))
        random_named = accuracy(classifier, crops)
        classifier.load_state_dict(fetch_resnet_weights(cfg.backbone, "pocket")[0])  # the head
        classifier.load_state_dict(step.net.backbone.body.state_dict(), strict=False)  # the trained body
        named = accuracy(classifier, crops)
    finally:
        torch.set_num_threads(threads)
    miou = evaluate_pseudo(gt, json.loads((tmp_path / "pseudo.json").read_text()), boundary=False)
    assert miou["overall"]["mask_miou"] >= MIN_MIOU, miou["overall"]
    assert named >= MIN_CROPS and random_named < MIN_CROPS, (named, random_named)
