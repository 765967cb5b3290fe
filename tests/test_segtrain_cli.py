"""`sap train` and `sap predict` end to end on a tiny schedule, and their one-sentence errors."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from conftest import subset_coco
from pseudolabel.core.rle import rle_to_bbox_xywh


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_sap(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the ``sap`` entry point in-process; returns (exit code, stdout, stderr).

    ``main`` configures the ``sap`` logger with a handler on the (captured) stderr of this test;
    the logger is put back as it was so that later tests do not write to a closed stream.
    """
    import cli

    log = logging.getLogger("sap")
    saved = (log.handlers[:], log.level, log.propagate)
    monkeypatch.setattr(sys, "argv", ["sap", *map(str, args)])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tiny(coco_gt, coco_dir, tmp_path):
    sub = subset_coco(coco_gt, 2, max_anns=3)
    for im in sub["images"]:  # one landscape, one portrait: each pass of 2 holds one of them twice
        anns = [a for a in sub["annotations"] if a["image_id"] == im["id"]]
        anns[0]["alternatives"] = [a["segmentation"] for a in anns[1:]]  # as `sap select` writes them
    gt = tmp_path / "train.json"
    gt.write_text(json.dumps(sub))
    cfg = tmp_path / "train.yaml"
    cfg.write_text("workers: 0\nlog_period: 1\nmodel:\n  fpn_channels: 32\n  head_channels: 32\n"
                   "  head_convs: 1\n  mask_channels: 32\n  kernel_dim: 32\n")
    return gt, coco_dir / "images", cfg


def test_train_then_predict(monkeypatch, capsys, tiny, tmp_path):
    gt, images, cfg = tiny
    run = tmp_path / "run"
    train_args = ["train", "--train", gt, "--images", images, "--out", run, "--val", gt, "--val-images", images,
                  "--backbone", "resnet18", "--backbone-weights", "none", "--iters", 2, "--batch", 2,
                  "--min-size", 64, "--max-size", 100, "--eval-period", 1, "--config", cfg]
    code, out, err = run_sap(monkeypatch, capsys, *train_args)
    assert code == 0, err
    assert "trained 2 iterations" in out and "val mask AP" in out
    for name in ("config.yaml", "metrics.jsonl", "model_final.pth", "final_eval.json", "last_checkpoint"):
        assert (run / name).is_file(), name
    record = (run / "config.yaml").read_text()
    assert "versions:" in record and "torch:" in record and "head_convs: 1" in record
    assert set(json.loads((run / "final_eval.json").read_text())) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(m["iter"], m.get("type", "train")) for m in metrics] == [(1, "train"), (1, "eval"), (2, "train"),
                                                                     (2, "eval")]  # periodic + final eval
    assert all(m["loss_mps"] > 0 for m in metrics if "loss" in m)  # the alternatives feed the auxiliary loss

    # the same run folder with another schedule cannot be resumed
    code, _, err = run_sap(monkeypatch, capsys, *train_args[:-2], "--iters", 3, "--resume", "--config", cfg)
    assert code == 2 and "different configuration (iters: 2 -> 3)" in err and err.count("\n") == 1

    # COCO results with the dataset's own ids; score threshold 0 so the barely trained model answers
    pred = tmp_path / "pred.json"
    code, out, err = run_sap(monkeypatch, capsys, "predict", "--weights", run / "model_final.pth", "--images", images,
                             "--ann", gt, "--out", pred, "--score-thr", 0, "--workers", 0)
    assert code == 0, err
    results = json.loads(pred.read_text())
    coco = json.loads(gt.read_text())
    assert results and {r["image_id"] for r in results} <= {im["id"] for im in coco["images"]}
    assert {r["category_id"] for r in results} <= {c["id"] for c in coco["categories"]}
    for r in results[:20]:
        assert set(r) == {"image_id", "category_id", "segmentation", "score", "bbox"}
        assert isinstance(r["segmentation"]["counts"], str)
        assert r["bbox"] == rle_to_bbox_xywh(r["segmentation"]) and r["bbox"][2] > 0 and r["bbox"][3] > 0
    assert pred.with_name("pred.config.yaml").is_file()

    # a folder without --ann: ids 1..N by file name, each result names its file
    folder = tmp_path / "imgs"
    folder.mkdir()
    for im in coco["images"]:
        (folder / im["file_name"]).symlink_to(images / im["file_name"])
    code, _, err = run_sap(monkeypatch, capsys, "predict", "--weights", run, "--images", folder, "--out",
                           tmp_path / "p2.json", "--score-thr", 0, "--workers", 0)
    assert code == 0, err
    p2 = json.loads((tmp_path / "p2.json").read_text())
    names = sorted(im["file_name"] for im in coco["images"])
    assert {(r["image_id"], r["file_name"]) for r in p2} <= {(i + 1, n) for i, n in enumerate(names)}


def test_bad_input_is_one_sentence_and_writes_nothing(monkeypatch, capsys, tiny, tmp_path):
    gt, images, cfg = tiny
    coco = json.loads(gt.read_text())
    used = {a["category_id"] for a in coco["annotations"]}
    unused = sorted({c["id"] for c in coco["categories"]} - used)[0]
    val = dict(coco, categories=[c for c in coco["categories"] if c["id"] != unused])
    val_path = tmp_path / "val.json"
    val_path.write_text(json.dumps(val))
    run = tmp_path / "run"
    base = ["train", "--train", gt, "--images", images, "--out", run, "--backbone", "resnet18",
            "--backbone-weights", "none", "--iters", 1, "--batch", 1, "--config", cfg]
    code, _, err = run_sap(monkeypatch, capsys, *base, "--val", val_path, "--val-images", images)
    assert code == 2 and "has categories absent from val.json" in err and err.count("\n") == 1
    missing = dict(coco, images=[dict(coco["images"][0], file_name="gone.jpg")] + coco["images"][1:])
    (tmp_path / "missing.json").write_text(json.dumps(missing))
    code, _, err = run_sap(monkeypatch, capsys, *base[:2], tmp_path / "missing.json", *base[3:])
    assert code == 2 and "missing" in err and "gone.jpg" in err
    code, _, err = run_sap(monkeypatch, capsys, *base, "--reference", "paper")
    assert code == 2 and "--reference must be one of official, sap, not 'paper'" in err and err.count("\n") == 1
    bad_rule = tmp_path / "bad_rule.yaml"
    bad_rule.write_text(cfg.read_text() + "rule_centre: middle\n")
    code, _, err = run_sap(monkeypatch, capsys, *base[:-1], bad_rule)
    assert code == 2 and "rule_centre must be one of official, sap, not 'middle'" in err
    assert not run.exists()
    code, _, err = run_sap(monkeypatch, capsys, "predict", "--weights", gt, "--images", images,
                           "--out", tmp_path / "p.json")
    assert code == 2 and "cannot be read as a PyTorch checkpoint" in err
    assert not (tmp_path / "p.json").exists()
