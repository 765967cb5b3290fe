"""The detectron2 engine: config keys, the registered SOLOv2 meta-architecture, and the install
sentence when detectron2 is missing. detectron2 is installed from its source repository, so its
tests are skipped (with this reason shown) where it is absent."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from pseudolabel.core.errors import InputError

HAVE_D2 = importlib.util.find_spec("detectron2") is not None
NEEDS_D2 = "detectron2 is not installed (it is installed from its source repository, not from PyPI)"


@pytest.mark.skipif(HAVE_D2, reason="detectron2 is installed: the missing-engine message cannot be shown")
def test_missing_detectron2_is_one_sentence_with_install_help(tmp_path):
    from segtrain import TrainConfig, train

    with pytest.raises(InputError, match=r"needs detectron2, .* pip install 'git\+https://github.com/"
                                         r"facebookresearch/detectron2.git'"):
        train(TrainConfig(train="t.json", images=str(tmp_path), out=str(tmp_path / "run"), engine="detectron2"))


def test_add_solov2_config_has_the_spec_defaults():
    pytest.importorskip("detectron2", reason=NEEDS_D2)
    from detectron2.config import get_cfg

    from segtrain.d2 import add_solov2_config

    cfg = add_solov2_config(get_cfg())
    s = cfg.MODEL.SOLOV2
    assert cfg.MODEL.META_ARCHITECTURE == "SOLOv2" and cfg.INPUT.MASK_FORMAT == "bitmask"
    assert list(s.NUM_GRIDS) == [40, 36, 24, 16, 12] and list(s.FPN_INSTANCE_STRIDES) == [8, 8, 16, 32, 32]
    assert s.INSTANCE_CHANNELS == 512 and s.NUM_INSTANCE_CONVS == 4 and s.NUM_MASKS == 256
    assert s.LOSS.DICE_WEIGHT == 3.0 and s.LOSS.FOCAL_ALPHA == 0.25 and s.NMS_KERNEL == "gaussian"
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER) == (0.01, 16, 90000)
    assert tuple(cfg.SOLVER.STEPS) == (60000, 80000) and cfg.SOLVER.WARMUP_ITERS == 1000


def test_registered_meta_architecture_trains_and_predicts():
    pytest.importorskip("detectron2", reason=NEEDS_D2)
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import BitMasks, Instances

    from segtrain.d2 import add_solov2_config, register_solov2

    register_solov2()
    cfg = add_solov2_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    s = cfg.MODEL.SOLOV2
    s.NUM_CLASSES, s.BACKBONE, s.BACKBONE_WEIGHTS = 3, "resnet18", "none"
    s.FPN_CHANNELS, s.INSTANCE_CHANNELS, s.NUM_INSTANCE_CONVS, s.MASK_CHANNELS, s.NUM_MASKS = 32, 32, 1, 32, 32
    model = build_model(cfg)
    masks = torch.zeros(2, 64, 96, dtype=torch.bool)
    masks[0, 5:40, 5:50] = True
    masks[1, 30:60, 50:90] = True
    inst = Instances((64, 96))
    inst.gt_masks = BitMasks(masks)
    inst.gt_classes = torch.tensor([0, 2])
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    model.train()
    losses = model([{"image": image, "instances": inst}])
    assert set(losses) == {"loss_cate", "loss_mask"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model([{"image": image, "height": 128, "width": 192}])
    pred = out[0]["instances"]
    assert pred.image_size == (128, 192)
    assert {"pred_masks", "scores", "pred_classes", "pred_boxes"} <= set(pred.get_fields())
