"""The selector's quality floor: on the pocket SAM's proposals, sapnet beats SAM's own ranking.

The demo's 16 shapes images (:func:`make_demo_dataset`, never seen by the pocket SAM's or the
pocket backbone's training), points at the mask centres, the pocket SAM's proposals
(``point,point_box``, 6 a point), then `run_select` with sapnet (official rules) trained on those
points, exactly as `sap demo` does offline (transductive: it trains on the points it then selects
for): 12 epochs of 16 images at batch 2 (96 iterations), warmup 10, 50 NPG negatives an image.

The floor (docs/selector.md, "A quality floor in the suite"), mask mIoU against the truth:
sapnet ≥ sam-top1 + :data:`MARGIN`. Measured on this set (seed 0): sam-top1 0.646, sapnet on the
pocket backbone 0.678, the same run on a random-weight backbone (at its rate, 0.16 per 32) 0.614.
On the demo data drawn with seed 1 the gap is small: 0.636, 0.646 and 0.639, so the floor is a
margin this set supports, not a general one. The random-weight run is the second case here and
must stay *below* the floor, so the floor measures what the selector learns, not the bags.
The pocket case also checks that training keeps what the pocket backbone knows: its body, under
the pocket classifier head, still names held-out object crops (which fails when the selector
drops or resets the pretrained weights or their BatchNorm statistics).
"""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from pseudolabel.core.backbones import fetch_resnet_weights
from pseudolabel.core.points import derive_points
from pseudolabel.core.resnet_fpn import resnet_body
from pseudolabel.evaluate import evaluate_pseudo
from pseudolabel.pipeline.demo import DEMO_IMAGES, DEMO_SELECT, POCKET_LR, make_demo_dataset
from pseudolabel.pocket.backbone import CLASSES, BackboneConfig, accuracy, crop_batch
from pseudolabel.proposals.run import ProposalConfig, run_proposals
from pseudolabel.selector import SelectConfig, run_select
from pseudolabel.selector.train import SCRATCH_LR, build_model, load_checkpoint, load_net_state

#: the demo's selector, schedule and all
CFG = SelectConfig(**DEMO_SELECT, backbone="resnet18_half")
MARGIN = 0.01  # sapnet − sam-top1: measured +0.032; random weights −0.032 (docs/selector.md)
MIN_CROPS = 0.80  # held-out crops named by the trained body: measured 0.898 (random weights 0.227)


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """The demo's images, their points and the pocket SAM's proposals, and sam-top1's mIoU."""
    from pseudolabel.core.engines.loading import create_engine

    root = tmp_path_factory.mktemp("pocket_select")
    gt_path, images = make_demo_dataset(root / "data", n_images=DEMO_IMAGES, seed=0)
    gt = json.loads(gt_path.read_text())
    ann = root / "points.json"
    ann.write_text(json.dumps(derive_points(gt, "center")[0]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic on every machine
    try:
        engine = create_engine("sam_pocket", None, "cpu", "fp32")
        run_proposals(ann, images, root / "cache", ProposalConfig(prompts="point,point_box"), engine=engine)
    finally:
        torch.set_num_threads(threads)
    run_select(ann, root / "cache", root / "top1.json", replace(CFG, method="sam-top1"))
    top1 = evaluate_pseudo(gt, json.loads((root / "top1.json").read_text()), boundary=False)
    return SimpleNamespace(root=root, gt=gt, ann=ann, images=images, top1=top1["overall"]["mask_miou"])


def _trained_body_names_crops(cfg: SelectConfig, work, categories: list[int]) -> tuple[float, float]:
    """Held-out crops named by the trained selector's body under the pocket classifier head, and
    by a random-weight body."""
    state = load_checkpoint(work / "selector.pt", categories, cfg)
    step = build_model(replace(cfg, backbone_weights="checkpoint"), len(categories), state["backbone_norm"])
    load_net_state(step, state)
    crops = [crop_batch(BackboneConfig(batch=64), "test", i) for i in range(2)]
    torch.manual_seed(0)
    classifier = resnet_body(cfg.backbone, torch.nn.BatchNorm2d, num_classes=len(CLASSES))
    random_named = accuracy(classifier, crops)
    classifier.load_state_dict(fetch_resnet_weights(cfg.backbone, "pocket")[0])  # the head
    classifier.load_state_dict(step.net.backbone.body.state_dict(), strict=False)  # the trained body
    return accuracy(classifier, crops), random_named


@pytest.mark.parametrize("weights", ["pocket", "none"])
def test_sapnet_beats_sam_top1_on_the_pocket_backbone_and_not_from_random_weights(bags, weights, tmp_path,
                                                                                   one_torch_thread):
    cfg = replace(CFG, backbone_weights=weights, lr=POCKET_LR if weights == "pocket" else SCRATCH_LR,
                  work_dir=str(tmp_path / "work"))
    run_select(bags.ann, bags.root / "cache", tmp_path / "pseudo.json", cfg, images=bags.images)
    if weights == "pocket":
        named, random_named = _trained_body_names_crops(cfg, tmp_path / "work",
                                                        [c["id"] for c in bags.gt["categories"]])
    miou = evaluate_pseudo(bags.gt, json.loads((tmp_path / "pseudo.json").read_text()), boundary=False)
    got = miou["overall"]["mask_miou"]
    if weights == "pocket":
        assert got >= bags.top1 + MARGIN, (got, bags.top1)
        assert named >= MIN_CROPS and random_named < MIN_CROPS, (named, random_named)
    else:  # the control: the same run without the pretrained features stays under the floor
        assert got < bags.top1 + MARGIN, (got, bags.top1)
