"""Where backbone weights come from: a file (prefixes stripped), nothing, or a clear error."""

import pytest
import torch
import torchvision

from pseudolabel.backbones import fetch_resnet_weights
from pseudolabel.errors import InputError


def test_a_wrapped_prefixed_state_dict_file_loads_into_a_resnet(tmp_path):
    net = torchvision.models.resnet18(weights=None)
    wrapped = {"model": {f"module.backbone.body.{k}": v for k, v in net.state_dict().items()}}
    torch.save(wrapped, tmp_path / "r18.pth")
    state, source = fetch_resnet_weights("resnet18", tmp_path / "r18.pth")
    assert source == f"file:{tmp_path / 'r18.pth'}"
    fresh = torchvision.models.resnet18(weights=None)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.conv1.weight, net.conv1.weight)


def test_random_start_and_bad_files(tmp_path, caplog):
    assert fetch_resnet_weights("resnet50", "none") == (None, "random")
    with pytest.raises(InputError, match="does not exist"):
        fetch_resnet_weights("resnet50", tmp_path / "missing.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(InputError, match="state dict"):
        fetch_resnet_weights("resnet50", tmp_path / "list.pth")
    with pytest.raises(InputError, match="unknown backbone"):
        fetch_resnet_weights("vgg16", "none")
