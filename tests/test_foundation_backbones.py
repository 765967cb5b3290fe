"""Where backbone weights come from: a file (prefixes stripped), nothing, or a clear error."""

import pytest
import torch
import torchvision

from pseudolabel.core.backbones import fetch_resnet_weights
from pseudolabel.core.errors import InputError


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


def _detectron2_resnet18_state():
    """A real detectron2 ResNet-18 (BasicBlock) state dict, random weights, detectron2's own names."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    torch.manual_seed(0)
    net = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    for m in net.modules():  # non-trivial running statistics, so the norms are checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return {f"backbone.bottom_up.{k}": v for k, v in net.state_dict().items()}


def test_detectron2_named_resnet_weights_load_into_the_shared_resnet_fpn(tmp_path):
    # the README's install has no detectron2 (no wheel): this test runs in CI's second step, which has it
    pytest.importorskip("detectron2", reason="detectron2 is not installed (see the README's detectron2 section)")
    from pseudolabel.core.resnet_fpn import build_resnet_fpn
    from pseudolabel.selector.model import build_backbone as selector_backbone
    from segtrain.model import build_solo_backbone

    d2 = _detectron2_resnet18_state()
    path = tmp_path / "d2_model_final.pth"
    torch.save({"model": d2, "iteration": 10}, path)
    solo = build_solo_backbone("resnet18", str(path), fpn_channels=32)
    sel, source = selector_backbone("resnet18", path)
    assert source == f"file:{path}" and solo.norm == "frozen_bn"
    for net in (solo, sel):
        body = net.body
        assert torch.equal(body.conv1.weight, d2["backbone.bottom_up.stem.conv1.weight"])
        assert torch.equal(body.bn1.running_var, d2["backbone.bottom_up.stem.conv1.norm.running_var"])
        assert torch.equal(body.layer2[0].downsample[0].weight, d2["backbone.bottom_up.res3.0.shortcut.weight"])
        assert torch.equal(body.layer2[0].downsample[1].bias, d2["backbone.bottom_up.res3.0.shortcut.norm.bias"])
        assert torch.equal(body.layer4[1].bn2.weight, d2["backbone.bottom_up.res5.1.conv2.norm.weight"])
    with pytest.raises(InputError, match="do not fit a torchvision resnet50"):
        build_resnet_fpn("resnet50", str(path))


def test_mmdetection_and_torchvision_checkpoints_load_and_the_variants_differ(tmp_path):
    from pseudolabel.core.resnet_fpn import ResNetFPN, build_resnet_fpn

    tv = torchvision.models.resnet18(weights=None).state_dict()
    mm = {"meta": {"epoch": 12}, "state_dict": {f"backbone.{k}": v for k, v in tv.items()}}
    torch.save(mm, tmp_path / "mmdet.pth")
    torch.save(tv, tmp_path / "tv.pth")
    for name in ("mmdet.pth", "tv.pth"):
        net, _ = build_resnet_fpn("resnet18", str(tmp_path / name), fpn_channels=32)
        assert torch.equal(net.body.layer3[1].conv2.weight, tv["layer3.1.conv2.weight"])
        assert not net.body.layer1[0].conv1.weight.requires_grad and net.body.layer2[0].conv1.weight.requires_grad
    # SOLOv2's P6 (max-pool of P5) and the selector's (GN conv on C5), and the output contract
    solo = ResNetFPN("resnet18", norm="gn", fpn_channels=32, p6="maxpool", freeze_at=0).eval()
    sel = ResNetFPN("resnet18", norm="frozen_bn", fpn_channels=32, fpn_norm="gn", p6="conv").eval()
    x = torch.randn(1, 3, 64, 96)
    out = solo(x)
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert torch.equal(out["p6"], torch.nn.functional.max_pool2d(out["p5"], 1, 2))
    assert "extra_blocks.conv.1.weight" in dict(sel.fpn.named_parameters())  # the GN after P6's conv
    assert isinstance(sel.fpn.layer_blocks[0][1], torch.nn.GroupNorm)
    assert all(p.requires_grad for p in solo.parameters())
