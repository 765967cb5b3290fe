"""The detectron2 engine against a real detectron2, through its own data path.

The training file is registered with ``register_coco_instances`` and read by ``DatasetMapper``;
``DefaultTrainer`` trains, ``COCOEvaluator`` scores, ``DetectionCheckpointer`` saves and resumes,
and the exported weights load in ``sap predict``. The images are the six CC-BY COCO photos of
tests/data/coco_cc_by (one has no instance), at a small size with narrow heads (R18).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from pseudolabel.core.errors import InputError
from segtrain import TrainConfig, run_train
from segtrain.config import lr_schedule_of, model_config_of
from segtrain.model import SOLOv2, SOLOv2Config
from segtrain.postprocess import InferenceParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# CI installs detectron2 (.ci/run), so nothing here skips there; the missing-engine test runs everywhere
needs_d2 = pytest.mark.skipif(importlib.util.find_spec("detectron2") is None,
                              reason="detectron2 is not installed (bash ../shared/vendor/install-detectron2.sh)")

DATA = Path(__file__).resolve().parent / "data" / "coco_cc_by"
NARROW = dict(fpn_channels=32, head_channels=32, head_convs=1, mask_channels=32, kernel_dim=32)


def d2_config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(train=str(DATA / "annotations.json"), images=str(DATA / "images"), out=str(tmp_path / "run"),
                engine="detectron2", backbone="resnet18", backbone_weights="none", iters=4, batch=2,
                min_size="64", max_size=107, workers=0, device="cpu", model=dict(NARROW))
    return TrainConfig(**{**base, **kw})


def test_missing_detectron2_is_one_sentence_with_install_help(tmp_path, monkeypatch, capsys):
    from conftest import run_cli

    # hide detectron2, and any of its modules an earlier test imported: `import detectron2...` now
    # raises ImportError, as where it was never installed
    for name in [m for m in sys.modules if m == "detectron2" or m.startswith("detectron2.")] + ["detectron2"]:
        monkeypatch.setitem(sys.modules, name, None)
    run = tmp_path / "run"
    code = run_cli(["train", "--engine", "detectron2", "--train", str(DATA / "annotations.json"), "--images",
                    str(DATA / "images"), "--out", str(run), "--iters", "4", "--batch", "2", "--device", "cpu",
                    "--backbone-weights", "none"], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert "the detectron2 engine needs detectron2" in err
    assert "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git" in err
    assert not run.exists()


@needs_d2
def test_every_model_and_inference_setting_reaches_the_detectron2_model(tmp_path):
    from detectron2.modeling import build_model
    from detectron2.solver import build_lr_scheduler

    from segtrain.d2.meta_arch import register_solov2
    from segtrain.d2.settings import build_d2_config, solov2_config_from_cfg

    inference = dict(score_thr=0.3, mask_thr=0.4, nms_pre=50, update_thr=0.2, max_per_img=7, nms_kernel="linear",
                     nms_sigma=3.0, max_candidates=99, upsample_chunk=4)
    changed = dict(backbone="resnet34", backbone_weights="none", backbone_norm="gn", freeze_at=1, num_grids=(20, 18, 12, 8, 6),
                   strides=(8, 16, 16, 32, 32), scale_ranges=((1, 64), (32, 128), (64, 256), (128, 512), (256, 1024)),
                   sigma=0.3, prior_prob=0.02, focal_alpha=0.3, focal_gamma=1.5, focal_weight=2.0, dice_weight=2.5,
                   dice_eps=1e-4, mps_weight=0.5, mps_ranks=(2, 3), mps_reduce="sum", inference=inference,
                   pixel_mean=(120.0, 110.0, 100.0), pixel_std=(50.0, 51.0, 52.0), size_divisibility=64,
                   **{**NARROW, "fpn_channels": 64, "kernel_dim": 64})
    # every field is set to something else than its default (a new field must be added here)
    defaults = SOLOv2Config()
    assert set(changed) == {f.name for f in dataclasses.fields(SOLOv2Config)} - {"num_classes"}
    assert all(changed[k] != getattr(defaults, k) for k in changed if k != "inference")
    assert all(v != getattr(InferenceParams(), k) for k, v in inference.items())
    assert set(inference) == {f.name for f in dataclasses.fields(InferenceParams)}

    tcfg = d2_config(tmp_path, model=changed, iters=3)
    expected = model_config_of(tcfg, 80)
    cfg = build_d2_config(tcfg, 80)
    assert solov2_config_from_cfg(cfg) == expected
    register_solov2()
    net = build_model(cfg)
    assert type(net).__name__ == "SapSOLOv2" and net.model.cfg == expected
    with pytest.raises(InputError, match="num_classes comes from the training file"):
        model_config_of(d2_config(tmp_path, model={"num_classes": 3}), 80)

    # detectron2's own scheduler follows the torch engine's schedule, short runs included
    for iters in (1, 2, 3, 4, 5, 40):
        tcfg = d2_config(tmp_path, iters=iters)
        cfg, sched = build_d2_config(tcfg, 80), lr_schedule_of(tcfg)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
        lr_scheduler = build_lr_scheduler(cfg, opt)
        for it in range(iters):
            assert opt.param_groups[0]["lr"] == pytest.approx(sched(it), rel=1e-12), (iters, it)
            opt.step()
            lr_scheduler.step()


@needs_d2
def test_a_foreign_solov2_in_the_registry_does_not_replace_ours(tmp_path):
    from detectron2.modeling import META_ARCH_REGISTRY, build_model

    from segtrain.d2.meta_arch import register_solov2
    from segtrain.d2.settings import build_d2_config

    class SOLOv2(torch.nn.Module):  # what importing AdelaiDet registers
        def __init__(self, cfg):
            super().__init__()

    META_ARCH_REGISTRY.register(SOLOv2)
    try:
        register_solov2()
        net = build_model(build_d2_config(d2_config(tmp_path), 80))
        assert type(net).__name__ == "SapSOLOv2" and type(net).__module__ == "segtrain.d2.meta_arch"
    finally:
        META_ARCH_REGISTRY._obj_map.pop("SOLOv2")


@needs_d2
def test_same_weights_and_batch_give_the_same_losses_and_step_in_both_engines(tmp_path):
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.data.datasets import register_coco_instances
    from detectron2.modeling import build_model

    from segtrain.d2.meta_arch import register_solov2
    from segtrain.d2.settings import build_d2_config, solov2_config_from_cfg
    from segtrain.d2.trainer import _trainer_class
    from segtrain.data import Sample
    from segtrain.engine import train_step
    from segtrain.sampling import pass_slices
    from segtrain.solver import make_optimizer
    from segtrain.targets import InstanceTargets, targets_from_masks

    tcfg = d2_config(tmp_path, min_size="96", max_size=160, flip_prob=0.0, batch=4, clip_grad=1.0)
    cfg = build_d2_config(tcfg, 80)
    name = cfg.DATASETS.TRAIN[0]
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, tcfg.train, tcfg.images)
    by_id = {d["image_id"]: d for d in DatasetCatalog.get(name)}
    mapper = DatasetMapper(cfg, True)
    batch = [mapper(by_id[i]) for i in (30, 508, 89, 127)]  # landscape photos; 508 has no instance
    assert not batch[1]["instances"].has("gt_masks") and len(batch[0]["instances"]) == 2

    register_solov2()
    torch.manual_seed(0)
    d2net = build_model(cfg).train()
    twin = SOLOv2(solov2_config_from_cfg(cfg)).train()
    twin.load_state_dict(d2net.model.state_dict())

    samples = []
    for x in batch:
        inst, (h, w) = x["instances"], x["image"].shape[-2:]
        targets = (targets_from_masks(inst.gt_masks.tensor, inst.gt_classes) if inst.has("gt_masks")
                   else InstanceTargets.empty(-(-h // 4), -(-w // 4)))
        samples.append(Sample(x["image"], x["image_id"], (x["height"], x["width"]), targets))
    passes = [samples[part] for part in pass_slices(len(samples), tcfg.images_per_pass)]
    lr = cfg.SOLVER.BASE_LR
    torch_losses = train_step(twin, passes, make_optimizer(twin, lr, tcfg.momentum, tcfg.weight_decay),
                              torch.amp.GradScaler("cuda", enabled=False), clip_grad=tcfg.clip_grad)

    d2_losses = d2net(batch)
    assert set(d2_losses) == {"loss_cate", "loss_mask"}
    for k in d2_losses:
        assert abs(d2_losses[k].item() - torch_losses[k]) < 1e-5, (k, d2_losses[k].item(), torch_losses[k])

    # one SGD step through detectron2's optimizer gives the same weights (the clipping is active)
    optimizer = _trainer_class(tmp_path).build_optimizer(cfg, d2net)
    optimizer.zero_grad()
    sum(d2_losses.values()).backward()
    grads = [p.grad for p in d2net.parameters() if p.grad is not None]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) > 2 * tcfg.clip_grad
    optimizer.step()
    for (name, a), b in zip(d2net.model.named_parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name


@needs_d2
def test_options_this_engine_cannot_honour_are_refused(tmp_path):
    coco = json.loads((DATA / "annotations.json").read_text())
    coco["annotations"][0]["alternatives"] = [coco["annotations"][1]["segmentation"]]
    alt = tmp_path / "alt.json"
    alt.write_text(json.dumps(coco))
    with pytest.raises(InputError, match=r"1 annotations carry 'alternatives' .* --mps-weight 0"):
        run_train(d2_config(tmp_path, train=str(alt)))
    with pytest.raises(InputError, match="flips with probability 0.5 or not at all"):
        run_train(d2_config(tmp_path, flip_prob=0.3))
    missing = dict(coco, images=[dict(coco["images"][0], file_name="gone.jpg")] + coco["images"][1:])
    (tmp_path / "missing.json").write_text(json.dumps(missing))
    with pytest.raises(InputError, match="1 images of missing.json are missing and the detectron2 engine reads"):
        run_train(d2_config(tmp_path, train=str(tmp_path / "missing.json"), skip_missing_images=True))
    with pytest.raises(InputError, match="do not split into passes"):
        run_train(d2_config(tmp_path, batch=3))
    assert not (tmp_path / "run").exists()


@needs_d2
def test_train_evaluate_resume_and_predict_through_detectron2(tmp_path, monkeypatch, capsys):
    from conftest import run_cli

    images = tmp_path / "images"  # the six photos, one of them unreadable on disk
    images.mkdir()
    for p in (DATA / "images").iterdir():
        (images / p.name).symlink_to(p)
    (images / "000000000165.jpg").unlink()
    (images / "000000000165.jpg").write_bytes(b"not a jpeg")
    coco = json.loads((DATA / "annotations.json").read_text())
    val = tmp_path / "val.json"
    val.write_text(json.dumps(dict(coco, images=[im for im in coco["images"] if im["id"] != 165],
                                   annotations=[a for a in coco["annotations"] if a["image_id"] != 165])))
    run = tmp_path / "run"
    # CPU and the default --amp, four iterations (detectron2's scheduler once failed at <= 4)
    args = ["train", "--engine", "detectron2", "--train", DATA / "annotations.json", "--images", images, "--out", run,
            "--val", val, "--val-images", images, "--backbone", "resnet18", "--backbone-weights", "none",
            "--iters", 4, "--batch", 2, "--min-size", 64, "--max-size", 107, "--workers", 0, "--device", "cpu",
            "--keep-empty-images", "--checkpoint-period", 2, "--eval-period", 2, "--config", tmp_path / "c.yaml"]
    (tmp_path / "c.yaml").write_text("log_period: 1\nmodel:\n" + "".join(f"  {k}: {v}\n" for k, v in NARROW.items()))
    code = run_cli(list(map(str, args)), monkeypatch)
    out, err = capsys.readouterr()
    assert code == 1, err  # the run finished, and says which image it could not read
    assert "trained 4 iterations (to 4)" in out and "6 images, 36 instances" in out and "000000000165.jpg" in out
    for name in ("config.yaml", "metrics.jsonl", "model_final.pth", "final_eval.json",
                 "detectron2/model_0000001.pth", "detectron2/model_final.pth",
                 "detectron2/inference/coco_instances_results.json"):
        assert (run / name).is_file(), name
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(m["iter"], m.get("type", "train")) for m in metrics] == [
        (1, "train"), (2, "train"), (2, "eval"), (3, "train"), (4, "train"), (4, "eval")]
    assert set(json.loads((run / "final_eval.json").read_text())) == {"iter", "AP", "AP50", "AP75", "APs", "APm", "APl"}

    # an interrupted run (killed after its checkpoint at iteration 2) resumes there
    for name in ("model_final.pth", "last_checkpoint", "final_eval.json", "detectron2/model_final.pth",
                 "detectron2/model_0000003.pth"):
        (run / name).unlink(missing_ok=True)
    (run / "detectron2" / "last_checkpoint").write_text("model_0000001.pth")
    assert run_cli(list(map(str, args)), monkeypatch) == 2  # no --resume: refused
    assert "already holds a training run (model_0000001.pth)" in capsys.readouterr().err
    assert run_cli(list(map(str, args[:-2] + ["--iters", 5, "--resume", "--config", tmp_path / "c.yaml"])),
                   monkeypatch) == 2
    assert "different configuration (iters: 4 -> 5)" in capsys.readouterr().err
    code = run_cli(list(map(str, args + ["--resume"])), monkeypatch)
    out, err = capsys.readouterr()
    assert code == 1, err  # the image it could not read is still named
    assert "trained 2 iterations (to 4)" in out
    assert [m["iter"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())][-3:] == [3, 4, 4]

    # the exported weights are a `sap predict` checkpoint
    pred = tmp_path / "pred.json"
    code = run_cli(["predict", "--weights", str(run), "--images", str(DATA / "images"), "--ann", str(val),
                    "--out", str(pred), "--score-thr", "0", "--workers", "0", "--device", "cpu"], monkeypatch)
    assert code == 0, capsys.readouterr().err
    results = json.loads(pred.read_text())
    assert results and {r["image_id"] for r in results} <= {im["id"] for im in coco["images"]}
