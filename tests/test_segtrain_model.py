"""SOLOv2 end to end on CPU: one training step per backbone size, exact save/resume, bad resumes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import subset_coco
from pseudolabel.core.errors import InputError
from pseudolabel.core.resnet_fpn import BACKBONES, ResNetFPN
from segtrain.model import build_solo_backbone as build_backbone
from segtrain.checkpoint import load_checkpoint, model_from_checkpoint
from segtrain import TrainConfig, run_train
from segtrain.model import SOLOv2, SOLOv2Config
from segtrain.targets import targets_from_masks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# narrow heads keep CPU steps quick; the architecture is the same as at full width
TINY = dict(fpn_channels=32, head_channels=32, head_convs=2, mask_channels=32, kernel_dim=32)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet101"])
def test_one_training_step_per_backbone(name):
    torch.manual_seed(0)
    model = SOLOv2(SOLOv2Config(num_classes=3, backbone=name, backbone_norm="gn", **TINY))
    model.train()
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    masks = torch.zeros(2, 64, 80, dtype=torch.uint8)
    masks[0, 10:40, 8:50] = 1
    masks[1, 30:60, 40:78] = 1
    batch, sizes = model.preprocess([image, image.flip(-1)])
    targets = [targets_from_masks(masks, torch.tensor([0, 2])), targets_from_masks(masks[:0], torch.tensor([]))]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    before = model.ins_head.cate_pred.weight.detach().clone()
    losses = model(batch, sizes, targets)
    loss = losses["loss_cate"] + losses["loss_mask"]
    assert torch.isfinite(loss) and losses["num_pos"].item() > 0
    loss.backward()
    opt.step()
    assert not torch.equal(before, model.ins_head.cate_pred.weight)
    model.eval()
    preds = model.predict([image], [(128, 160)])
    assert preds[0].masks.shape[1:] == (128, 160)


def test_backbone_weights_from_a_file_select_frozen_bn(tmp_path):
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": state}, path)
    bb = build_backbone("resnet18", path, fpn_channels=32)
    assert bb.norm == "frozen_bn"
    assert torch.equal(bb.body.conv1.weight, state["conv1.weight"])
    assert not bb.body.layer1[0].conv1.weight.requires_grad  # FREEZE_AT = 2
    assert bb.body.layer2[0].conv1.weight.requires_grad
    random = build_backbone("resnet18", "none", fpn_channels=32)
    assert random.norm == "gn" and all(p.requires_grad for p in random.parameters())
    with pytest.raises(InputError, match="do not fit a torchvision resnet50"):
        build_backbone("resnet50", path, fpn_channels=32)
    with pytest.raises(InputError, match="unknown backbone"):
        ResNetFPN("vgg16")
    assert {"resnet18", "resnet50", "resnet101"} <= set(BACKBONES)


@pytest.fixture
def tiny_run(coco_gt, coco_dir, tmp_path):
    sub = subset_coco(coco_gt, 2, max_anns=3)
    gt = tmp_path / "train.json"
    gt.write_text(json.dumps(sub))
    cfg = TrainConfig(train=str(gt), images=str(coco_dir / "images"), out=str(tmp_path / "a"),
                      backbone="resnet18", backbone_weights="none", iters=4, batch=2, base_lr=0.01, base_batch=2,
                      min_size="64,80", max_size=120, workers=0, log_period=1, checkpoint_period=2, model=TINY)
    return cfg


def _metrics(run_dir):
    """The metric lines without their timing."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if k != "img_per_s"} for m in lines]


def test_resume_reproduces_the_uninterrupted_run_exactly(tiny_run, tmp_path):
    summary = run_train(tiny_run)
    a = tmp_path / "a"
    assert summary.iters == 4 and (a / "model_0000002.pth").is_file() and (a / "config.yaml").is_file()
    # simulate a crash after iteration 2: the run folder as it was then
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "model_final.pth").unlink()
    (b / "last_checkpoint").write_text("model_0000002.pth\n")
    resumed = run_train(TrainConfig(**{**tiny_run.__dict__, "out": str(b)}), resume=True)
    assert resumed.start_iter == 2
    final_a, final_b = load_checkpoint(a / "model_final.pth"), load_checkpoint(b / "model_final.pth")
    assert final_a["model"].keys() == final_b["model"].keys()
    for k, v in final_a["model"].items():
        assert torch.equal(v, final_b["model"][k]), k
    assert _metrics(a) == _metrics(b)  # same losses and lr at iterations 3 and 4, nothing duplicated
    model, cats = model_from_checkpoint(final_b)
    assert cats.ids == sorted({c["id"] for c in json.loads(open(tiny_run.train).read())["categories"]})
    assert model.cfg.backbone_norm == "gn" and model.cfg.fpn_channels == 32


def test_bad_resumes_are_one_sentence_and_old_checkpoints_are_pruned(tiny_run, tmp_path):
    tiny_run.iters, tiny_run.checkpoint_period, tiny_run.keep_checkpoints = 3, 1, 1
    run_train(tiny_run)
    assert sorted(p.name for p in (tmp_path / "a").glob("*.pth")) == ["model_0000002.pth", "model_final.pth"]
    with pytest.raises(InputError, match="already holds a training run .* --resume"):
        run_train(tiny_run)
    changed = TrainConfig(**{**tiny_run.__dict__, "iters": 4, "base_lr": 0.02})
    with pytest.raises(InputError, match=r"different configuration \(base_lr: 0.01 -> 0.02; iters: 3 -> 4\)"):
        run_train(changed, resume=True)
    # a finished run resumed with the same configuration has nothing left to do
    done = run_train(tiny_run, resume=True)
    assert done.start_iter == 3 and done.first_loss is None
