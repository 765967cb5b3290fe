"""The pocket backbone: its pretraining data, the bundled weights through the real loading path,
and that they learned the scenes' object classes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pseudolabel.core.backbones import BUNDLED, fetch_resnet_weights
from pseudolabel.core.engines.loading import WEIGHTS_DIR, sha256_of
from pseudolabel.core.errors import InputError
from pseudolabel.core.resnet_fpn import resnet_body
from pseudolabel.pocket.backbone import CLASSES, BackboneConfig, accuracy, crop_batch, jitter_box
from pseudolabel.selector.model import SelectorNet

NAME, FILENAME, DIGEST = BUNDLED["pocket"]


def test_crop_batches_are_a_pure_function_of_split_and_index():
    cfg = BackboneConfig(batch=24, crop=32)
    x, y = crop_batch(cfg, "backbone", 3)
    x2, y2 = crop_batch(cfg, "backbone", 3)
    assert x.shape == (24, 3, 32, 32) and torch.equal(x, x2) and torch.equal(y, y2)
    assert 0 <= int(y.min()) and int(y.max()) < len(CLASSES)
    assert not torch.equal(crop_batch(cfg, "test", 3)[0], x)  # held-out crops come from other scenes


def test_jitter_box_stays_in_the_frame_and_keeps_8_px():
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(200):
        x0, y0, x1, y1 = jitter_box((95, 2, 100, 5), (60, 100), rng)
        assert 0 <= x0 and x1 <= 100 and 0 <= y0 and y1 <= 60 and x1 - x0 >= 8 and y1 - y0 >= 8


def test_the_bundled_weights_load_into_the_selector_and_match_their_record():
    record = json.loads((WEIGHTS_DIR / FILENAME).with_suffix(".json").read_text())
    assert record["sha256"] == DIGEST == sha256_of(WEIGHTS_DIR / FILENAME)
    net = SelectorNet(3, 2, NAME, "pocket")
    assert net.backbone_weights == "pocket"
    state = torch.load(WEIGHTS_DIR / FILENAME, weights_only=True)
    assert torch.equal(net.backbone.body.layer3[0].conv1.weight, state["layer3.0.conv1.weight"].float())
    assert isinstance(net.backbone.body.bn1, torch.nn.BatchNorm2d)  # the official BN rule, statistics kept


def test_bundled_weights_refuse_another_resnet_imagenet_and_an_altered_file(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="--backbone resnet18_half"):
        fetch_resnet_weights("resnet18", "pocket")
    with pytest.raises(InputError, match="no ImageNet weights for resnet18_half"):
        fetch_resnet_weights("resnet18_half", "imagenet")
    shutil.copy(WEIGHTS_DIR / FILENAME, tmp_path / FILENAME)
    with open(tmp_path / FILENAME, "ab") as f:
        f.write(b"\0")
    monkeypatch.setattr("pseudolabel.core.engines.loading.WEIGHTS_DIR", tmp_path)
    with pytest.raises(InputError, match="sha256"):
        fetch_resnet_weights(NAME, "pocket")
    (tmp_path / FILENAME).unlink()
    with pytest.raises(InputError, match="train_pocket_backbone"):
        fetch_resnet_weights(NAME, "pocket")


def test_the_pocket_backbone_classifies_held_out_crops_and_random_weights_do_not():
    """Held-out crops (the test split's scenes): the pretrained classifier against a random one.
    Floors below the measured values (128 crops, 7 classes, chance 1/7; the curve of 512 crops:
    docs/selector.md, "The pocket backbone")."""
    torch.manual_seed(0)
    cfg = BackboneConfig(batch=64)
    batches = [crop_batch(cfg, "test", i) for i in range(2)]
    model = resnet_body(NAME, torch.nn.BatchNorm2d, num_classes=len(CLASSES))
    random_acc = accuracy(model, batches)
    state, _ = fetch_resnet_weights(NAME, "pocket")
    model.load_state_dict(state)
    acc = accuracy(model, batches)
    assert acc >= 0.80 and random_acc <= 0.28, (acc, random_acc)  # measured 0.898 and 0.227
