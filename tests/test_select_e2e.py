"""`sap select` end to end on real COCO images with synthetic SAM-like bags (CPU, tiny settings)."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pycocotools.coco import COCO

import cli
from conftest import run_cli, subset_coco
from pseudolabel.core.alternatives import iter_sidecar, referenced_sidecar
from pseudolabel.core.errors import InputError
from pseudolabel.core.points import derive_points
from pseudolabel.core.rle import rle_area, rle_to_bbox_xywh
from pseudolabel.selector import SelectConfig, run_select
from pseudolabel.testing.synthetic import LABELS, synthetic_bags, write_bags_cache

# Small enough for a loaded 2-core machine: resnet18 at short side 128, 32 random negatives.
FAST = SelectConfig(epochs=1, backbone="resnet18", backbone_weights="none", min_size=128, max_size=192,
                    batch_size=2, workers=0, npg_num=32)


@pytest.fixture(scope="module")
def data(coco_gt, coco_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("select")
    gt = subset_coco(coco_gt, 2, max_anns=4)
    points, _ = derive_points(gt, "center", seed=0)
    ann = root / "points.json"
    ann.write_text(json.dumps(points))
    bags = synthetic_bags(gt, points, seed=0)
    cache = write_bags_cache(root / "cache", points, bags, coco_dir / "images")
    return SimpleNamespace(root=root, gt=gt, points=points, ann=ann, bags=bags, cache=cache,
                           images=coco_dir / "images")


@pytest.fixture(scope="module")
def sapnet_run(data):
    out = data.root / "sapnet.json"
    summary = run_select(data.ann, data.cache, out, replace(FAST, method="sapnet"), images=data.images)
    return SimpleNamespace(out=out, summary=summary, weights=Path(summary.stats["weights"]))


def _check_output(path: Path, data, method: str) -> dict:
    out = json.loads(path.read_text())
    anns = out["annotations"]
    assert sorted(a["id"] for a in anns) == sorted(a["id"] for a in data.points["annotations"])
    side = referenced_sidecar(out, path)
    assert side == path.with_name(path.stem + ".alternatives.jsonl")
    alts = dict(iter_sidecar(side))
    assert list(alts) == [a["id"] for a in anns]
    by_id = {a["id"]: a for a in data.points["annotations"]}
    bag_of = {b.ann_id: b for bs in data.bags.values() for b in bs}
    for a in anns:
        src = by_id[a["id"]]
        assert (a["image_id"], a["category_id"], a["iscrowd"]) == (src["image_id"], src["category_id"], 0)
        assert a["point"] == pytest.approx(src["point"])
        assert isinstance(a["segmentation"]["counts"], str)
        assert a["bbox"] == rle_to_bbox_xywh(a["segmentation"]) and a["area"] == rle_area(a["segmentation"])
        sap = a["sap"]
        bag = bag_of[a["id"]]
        assert sap["method"] == method
        assert a["segmentation"] == bag.rles[sap["proposal_index"]]
        assert (sap["prompt_kind"], sap["rank"]) == (bag.kinds[sap["proposal_index"]], bag.ranks[sap["proposal_index"]])
        assert sorted(sap["order"]) == list(range(6))
        # the alternatives live in the sidecar the file names, in the same order, not in the JSON
        assert "alternatives" not in a
        assert alts[a["id"]] == [bag.rles[j] for j in sap["order"] if j != sap["proposal_index"]]
    coco = COCO(str(path))  # loads as a dataset ...
    assert len(coco.getAnnIds()) == len(anns)
    gt = COCO()
    gt.dataset = json.loads(json.dumps(data.gt))
    gt.createIndex()
    results = [{k: a[k] for k in ("image_id", "category_id", "segmentation", "score")} for a in anns]
    assert len(gt.loadRes(results).getAnnIds()) == len(anns)  # ... and as results
    return out


def test_sam_top1_takes_the_best_predicted_iou(data):
    out = data.root / "top1.json"
    summary = run_select(data.ann, data.cache, out, replace(FAST, method="sam-top1"))
    result = _check_output(out, data, "sam-top1")
    bag_of = {b.ann_id: b for bs in data.bags.values() for b in bs}
    for a in result["annotations"]:
        scores = bag_of[a["id"]].scores
        assert a["sap"]["proposal_index"] == int(np.argmax(scores))
        assert a["sap"]["order"] == list(np.argsort(-scores, kind="stable"))
        assert a["score"] == pytest.approx(scores.max(), abs=1e-6)
    # the synthetic SAM prefers parts: its top-1 is one of the two part proposals
    assert {LABELS[a["sap"]["proposal_index"]] for a in result["annotations"]} <= {"part_cut", "part_box"}
    assert summary.changed_vs_sam_top1 == 0.0
    assert out.with_name("top1.config.yaml").is_file()


def test_sapnet_writes_valid_coco_and_is_deterministic(data, sapnet_run):
    first = _check_output(sapnet_run.out, data, "sapnet")
    assert sapnet_run.weights.is_file() and sapnet_run.summary.stats["epochs_run"] == 1
    again = data.root / "sapnet_again.json"
    run_select(data.ann, data.cache, again, replace(FAST, method="sapnet", work_dir=str(data.root / "w2")),
               images=data.images)
    assert json.loads(again.read_text())["annotations"] == first["annotations"]
    assert again.with_name("sapnet_again.alternatives.jsonl").read_text() == \
        sapnet_run.out.with_name("sapnet.alternatives.jsonl").read_text()


def test_mil_runs_and_resume_finishes_the_schedule(data):
    out = data.root / "mil.json"
    cfg = replace(FAST, method="mil", work_dir=str(data.root / "mil_work"))
    run_select(data.ann, data.cache, out, cfg, images=data.images)
    _check_output(out, data, "mil")
    resumed = run_select(data.ann, data.cache, out, replace(cfg, epochs=2, resume=True), images=data.images)
    assert resumed.stats["epochs_run"] == 1 and resumed.stats["iterations"] == 2
    # one metrics line per epoch, the resumed epoch appended after the first
    lines = [json.loads(x) for x in (data.root / "mil_work" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["iter"]) for r in lines] == [(1, 1), (2, 2)]
    assert all(np.isfinite(r["psm"]) and r["lr"] > 0 and "prm" not in r for r in lines)


def test_unreadable_images_fall_back_or_are_skipped(data, sapnet_run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    first, second = data.points["images"][:2]
    shutil.copy(data.images / first["file_name"], images / first["file_name"])
    (images / second["file_name"]).write_bytes(b"not a jpeg")
    n_second = sum(a["image_id"] == second["id"] for a in data.points["annotations"])
    cfg = replace(FAST, method="sapnet", weights=str(sapnet_run.weights))
    summary = run_select(data.ann, data.cache, tmp_path / "fb.json", cfg, images=images)
    assert list(summary.failed_images) == [second["id"]] and len(summary.fallback) == n_second
    fb = [a for a in json.loads((tmp_path / "fb.json").read_text())["annotations"] if a["image_id"] == second["id"]]
    assert len(fb) == n_second and all(a["sap"]["method"] == "sam-top1" and a["sap"]["fallback"] for a in fb)
    summary = run_select(data.ann, data.cache, tmp_path / "skip.json", replace(cfg, missing="skip"), images=images)
    assert len(summary.skipped) == n_second and summary.written == len(data.points["annotations"]) - n_second


def test_points_without_proposals_are_counted_and_skipped(data, tmp_path):
    bags = {k: list(v) for k, v in data.bags.items()}
    image_id = next(iter(bags))
    dropped = bags[image_id].pop(0).ann_id
    cache = write_bags_cache(tmp_path / "cache", data.points, bags)
    summary = run_select(data.ann, cache, tmp_path / "out.json", replace(FAST, method="sam-top1"))
    assert summary.no_proposals == [dropped]
    assert dropped not in {a["id"] for a in json.loads((tmp_path / "out.json").read_text())["annotations"]}


def _run_cli(argv: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", ["sap", *map(str, argv)])
    with pytest.raises(SystemExit) as e:
        cli.main()
        sys.exit(0)
    return int(e.value.code or 0)


def test_cli_select_and_one_sentence_errors(data, sapnet_run, tmp_path, monkeypatch, capsys):
    base = ["select", "--ann", data.ann, "--proposals", data.cache]
    assert _run_cli([*base, "--out", tmp_path / "a.json", "--method", "sam-top1"], monkeypatch) == 0
    assert "pseudo-masks written" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "a.json").read_text())["annotations"]) == len(data.points["annotations"])
    # saved weights select without training, exactly as the run that trained them
    args = [*base, "--out", tmp_path / "w.json", "--images", data.images, "--backbone", "resnet18",
            "--weights", sapnet_run.weights, "--min-size", 128, "--max-size", 192, "--workers", 0]
    assert _run_cli(args, monkeypatch) == 0
    assert "training:" not in capsys.readouterr().out
    assert json.loads((tmp_path / "w.json").read_text())["annotations"] == \
        json.loads(sapnet_run.out.read_text())["annotations"]

    bad_cat = json.loads(data.ann.read_text())
    bad_cat["annotations"][0]["category_id"] = 9999
    moved = json.loads(data.ann.read_text())
    moved["annotations"][0]["point"][0] += 1.0
    (tmp_path / "bad_cat.json").write_text(json.dumps(bad_cat))
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "shard-00000-of-00001.sqlite").write_bytes(
        (data.cache / "shard-00000-of-00001.sqlite").read_bytes()[:3000])
    cases = {
        "absent from its categories": ["--ann", tmp_path / "bad_cat.json", "--proposals", data.cache],
        "different point file": ["--ann", tmp_path / "moved.json", "--proposals", data.cache],
        "damaged or not a proposal cache": ["--ann", data.ann, "--proposals", broken],
        "unknown selection method": ["--ann", data.ann, "--proposals", data.cache, "--method", "best"],
        "needs the images": ["--ann", data.ann, "--proposals", data.cache, "--method", "mil"],
        "--reference must be one of": ["--ann", data.ann, "--proposals", data.cache, "--reference", "code"],
    }
    for expected, args in cases.items():
        out = tmp_path / "never.json"
        assert _run_cli(["select", *args, "--out", out], monkeypatch) == 2, expected
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
        assert not out.exists()


def test_weights_for_other_categories_are_refused(data, sapnet_run, tmp_path):
    points = json.loads(data.ann.read_text())
    points["categories"] = points["categories"][:-1] + [{"id": 999, "name": "extra"}]
    used = {a["category_id"] for a in points["annotations"]}
    if not used <= {c["id"] for c in points["categories"]}:
        points["categories"].append(next(c for c in data.points["categories"] if c["id"] in used
                                         and c["id"] not in {d["id"] for d in points["categories"]}))
    (tmp_path / "p.json").write_text(json.dumps(points))
    with pytest.raises(InputError, match="other categories"):
        run_select(tmp_path / "p.json", data.cache, tmp_path / "o.json",
                   replace(FAST, method="sapnet", weights=str(sapnet_run.weights)), images=data.images)


def test_sapnet_ablation_switches_train_and_select(data):
    import torch

    from pseudolabel.selector.data import BagDataset, collate
    from pseudolabel.selector.train import build_model

    cfg = replace(FAST, method="sapnet")
    cats = sorted(c["id"] for c in data.points["categories"])
    ds = BagDataset(data.points["images"], data.bags, data.images, {c: i for i, c in enumerate(cats)},
                    max_size=96, min_size=64)
    step = build_model(cfg, len(cats))
    batch = collate([ds[0]])
    for flags in ({}, {"pdg": False}, {"pnpg": False}, {"bms": False}):
        step.cfg = replace(cfg, **flags)
        step.train()
        losses = step(batch.images, batch.samples, True, np.random.default_rng(0))
        assert set(losses) == ({"psm", "prm"} if flags.get("pnpg") is False else {"psm", "prm", "neg"})
        assert all(torch.isfinite(v) for v in losses.values())
        if not flags:  # gradients reach both stages' heads and the backbone
            sum(losses.values()).backward()
            for name in ("fc_cls.0.weight", "fc_cls.1.weight", "fc_ins.1.weight",
                         "backbone.fpn.layer_blocks.0.0.weight"):
                assert step.net.get_parameter(name).grad.abs().sum() > 0, name
        with torch.no_grad():
            choices = step.eval()(batch.images, batch.samples, False)
        assert [c.ann_id for c in choices] == [b.ann_id for b in ds.store.bags(ds.images[0]["id"])]
        assert all(0 <= c.index < 6 for c in choices)
        if flags.get("bms") is False:
            assert {c.bms for c in choices} == {"none"}


def test_sapnet_format_json_is_read_and_checked_against_the_points(data, tmp_path):
    from pseudolabel.core.sapnet_format import bags_to_sapnet

    sapnet_json = tmp_path / "sapnet.json"
    sapnet_json.write_text(json.dumps(bags_to_sapnet(data.points, data.bags)))
    run_select(data.ann, sapnet_json, tmp_path / "a.json", replace(FAST, method="sam-top1"))
    run_select(data.ann, data.cache, tmp_path / "b.json", replace(FAST, method="sam-top1"))
    assert json.loads((tmp_path / "a.json").read_text())["annotations"] == \
        json.loads((tmp_path / "b.json").read_text())["annotations"]
    fewer = json.loads(data.ann.read_text())
    fewer["annotations"] = fewer["annotations"][1:]
    (tmp_path / "fewer.json").write_text(json.dumps(fewer))
    with pytest.raises(InputError, match="belong to another point file"):
        run_select(tmp_path / "fewer.json", sapnet_json, tmp_path / "c.json", replace(FAST, method="sam-top1"))
    assert not (tmp_path / "c.json").exists()


def test_a_random_start_at_sapnets_imagenet_rate_hears_of_the_rate_that_learned():
    from pseudolabel.selector.train import SCRATCH_LR, scratch_rate_advice

    assert "--lr 0.16" in scratch_rate_advice(SelectConfig())  # 0.015 per 32: the official rate
    assert scratch_rate_advice(SelectConfig(lr=SCRATCH_LR)) is None
    assert scratch_rate_advice(SelectConfig(lr=0.02, lr_batch=4)) is None  # 0.16 per 32 images


def test_a_run_that_would_spend_most_of_its_iterations_in_warmup_is_told_so():
    from pseudolabel.selector.train import warmup_advice

    # SAPNet's 500 warmup iterations against 12 epochs of 16 images at batch 4 (48 iterations)
    advice = warmup_advice(SelectConfig(batch_size=4), 48)
    assert "48 iterations" in advice and "--warmup-iters 4" in advice
    assert warmup_advice(SelectConfig(batch_size=4, warmup_iters=24), 48) is None  # half: fine
    assert warmup_advice(SelectConfig(batch_size=4), 12000) is None


def test_training_warns_of_a_warmup_longer_than_half_its_iterations(data, caplog):
    """The run's iterations are its loader's: 2 images at batch 2, 1 epoch is one iteration."""
    import logging

    sap_logger = logging.getLogger("sap")  # it may not propagate (the CLI's setup)
    sap_logger.addHandler(caplog.handler)
    try:
        run_select(data.ann, data.cache, data.root / "warm.json",
                   replace(FAST, method="mil", warmup_iters=2, work_dir=str(data.root / "w_work")), images=data.images)
    finally:
        sap_logger.removeHandler(caplog.handler)
    assert "longer than half of this run's 1 iterations" in caplog.text


def test_the_lr_flag_reaches_the_written_configuration_and_a_bad_one_stops(data, monkeypatch):
    import yaml

    def argv(name: str, lr: str) -> list[str]:
        return ["select", "--ann", str(data.ann), "--proposals", str(data.cache), "--out", str(data.root / name),
                "--method", "sam-top1", "--lr", lr]

    assert run_cli([*argv("lr.json", "0.3"), "--warmup-iters", "7"], monkeypatch) == 0
    written = yaml.safe_load((data.root / "lr.config.yaml").read_text())["config"]
    assert written["lr"] == 0.3 and written["warmup_iters"] == 7
    assert run_cli(argv("lr0.json", "0"), monkeypatch) == 2
    assert not (data.root / "lr0.json").exists()
    assert run_cli([*argv("w.json", "0.3"), "--warmup-iters", "-1"], monkeypatch) == 2
    assert not (data.root / "w.json").exists()
