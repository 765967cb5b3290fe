"""Both engines of ``sap train`` feed the network the same batch and build the same targets.

The torch engine's ``TrainDataset`` and detectron2's ``DatasetMapper`` (what the detectron2
engine and AdelaiDet read images with) map the same CC-BY photos at the same short side, flipped
and not: the images, the instance masks, the annotation boxes, and then every target (stride-4
masks, centres, category grids and mask-target cells, under both references) must be equal.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from segtrain.data import TrainDataset, load_dataset
from segtrain.model import SOLOv2Config
from segtrain.targets import build_targets

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(importlib.util.find_spec("detectron2") is None,
                                 reason="detectron2 is not installed (bash ../shared/vendor/install-detectron2.sh)")]

DATA = Path(__file__).resolve().parent / "data" / "coco_cc_by"
SHORT, MAX = 200, 333


def _d2_items(flip: bool) -> dict[int, dict]:
    """detectron2's mapping of every training image at ``SHORT`` (always or never flipped)."""
    from detectron2.data import DatasetCatalog, DatasetMapper, transforms as T
    from detectron2.data.datasets import register_coco_instances

    name = "sap_engines_agree"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(DATA / "annotations.json"), str(DATA / "images"))
    augs = [T.ResizeShortestEdge(SHORT, MAX, "choice")] + ([T.RandomFlip(prob=1.0)] if flip else [])
    mapper = DatasetMapper(is_train=True, augmentations=augs, image_format="RGB", use_instance_mask=True,
                           instance_mask_format="bitmask")
    return {d["image_id"]: mapper(d) for d in DatasetCatalog.get(name)}


@pytest.mark.parametrize("flip", [False, True])
def test_the_torch_and_detectron2_engines_build_the_same_targets_from_the_same_batch(flip):
    from segtrain.d2.meta_arch import targets_of

    records, _, _ = load_dataset(DATA / "annotations.json", DATA / "images")
    d2 = _d2_items(flip)
    compared = 0
    for reference in ("official", "sap"):
        cfg = SOLOv2Config(**{f"rule_{r}": reference for r in ("cell_conflict", "mask_target", "centre", "scale_box")})
        dataset = TrainDataset(records, (SHORT,), MAX, flip_prob=1.0 if flip else 0.0, rules=cfg.data_rules())
        for k, rec in enumerate(records):
            ours, theirs = dataset[(k, 0)], d2[rec.image_id]
            assert torch.equal(ours.image, theirs["image"]), rec.file_name  # PIL bilinear, same size and flip
            inst = theirs["instances"]
            assert torch.equal(ours.targets.labels, inst.gt_classes)
            a, b = ours.targets, targets_of(inst, cfg.data_rules())
            assert torch.equal(a.boxes, b.boxes) and torch.equal(a.centers, b.centers), rec.file_name
            assert torch.equal(a.masks, b.masks), rec.file_name
            h, w = ours.image.shape[-2:]
            padded = (-(-h // 32) * 32, -(-w // 32) * 32)
            for la, lb in zip(*(build_targets(t, padded, cfg.num_grids, cfg.scale_ranges, cfg.sigma, cfg.num_classes,
                                              cfg.rule_cell_conflict) for t in (a, b))):
                assert torch.equal(la.labels, lb.labels)
                assert all(torch.equal(x, y) for x, y in zip(la.pairs(), lb.pairs()))
            compared += len(a)
    assert compared > 20


def test_both_engines_train_to_the_same_weights(tmp_path):
    """End to end through ``sap train``'s two engines (their samplers, schedulers, seeding): on two
    photos of one orientation every batch holds both, so three iterations must end at the same
    weights up to float summation order (before: each engine started from its own weights)."""
    import json

    from segtrain import TrainConfig, run_train
    from segtrain.checkpoint import load_checkpoint

    coco = json.loads((DATA / "annotations.json").read_text())
    keep = {30, 89}  # landscape, with instances
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(dict(coco, images=[im for im in coco["images"] if im["id"] in keep],
                                  annotations=[a for a in coco["annotations"] if a["image_id"] in keep])))
    narrow = dict(fpn_channels=32, head_channels=32, head_convs=1, mask_channels=32, kernel_dim=32)
    weights = {}
    for engine in ("torch", "detectron2"):
        cfg = TrainConfig(train=str(gt), images=str(DATA / "images"), out=str(tmp_path / engine), engine=engine,
                          backbone="resnet18", backbone_weights="none", iters=3, batch=2, base_lr=0.02, base_batch=2,
                          min_size="64", max_size=107, flip_prob=0.0, workers=0, checkpoint_period=0, device="cpu",
                          model=dict(narrow))
        run_train(cfg)
        weights[engine] = load_checkpoint(tmp_path / engine / "model_final.pth")["model"]
    start = {k for k in weights["torch"]}
    assert start == set(weights["detectron2"])
    moved = 0
    for name, a in weights["torch"].items():
        b = weights["detectron2"][name]
        assert torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-4), name
        moved += int(a.is_floating_point())
    assert moved > 50
