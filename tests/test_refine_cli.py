"""`sap corrupt` and `sap refine` through the command line."""

from __future__ import annotations

import json

import torch

from conftest import run_cli
from conftest import subset_coco
from pseudolabel.evaluate import evaluate_pseudo


def test_corrupt_is_repeatable_and_coarse(small_gt, tmp_path, monkeypatch):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    assert run_cli(["corrupt", "--gt", str(small_gt), "--out", str(a), "--seed", "3"], monkeypatch) == 0
    assert run_cli(["corrupt", "--gt", str(small_gt), "--out", str(b), "--seed", "3"], monkeypatch) == 0
    assert run_cli(["corrupt", "--gt", str(small_gt), "--out", str(c), "--seed", "4"], monkeypatch) == 0
    ja, jb, jc = (json.loads(p.read_text()) for p in (a, b, c))
    assert ja == jb and ja["annotations"] != jc["annotations"]
    gt = json.loads(small_gt.read_text())
    assert [x["id"] for x in ja["annotations"]] == [x["id"] for x in gt["annotations"]]
    miou = evaluate_pseudo(gt, ja, boundary=False)["overall"]["mask_miou"]
    assert 0.6 < miou < 0.95
    assert (tmp_path / "a.config.yaml").is_file()


def test_refine_needs_one_input_kind(tmp_path, monkeypatch, capsys):
    rc = run_cli(["refine", "--ann", "a.json", "--semantic", str(tmp_path), "--images", str(tmp_path),
               "--out", str(tmp_path / "o.json")], monkeypatch)
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "either --ann or --semantic" in err[0]


def test_refine_prompt_ablation_from_the_command_line(coco_gt, coco_dir, tmp_path, monkeypatch):
    sub = subset_coco(coco_gt, 1, max_anns=2)
    src = tmp_path / "coarse.json"
    src.write_text(json.dumps(sub))
    out = tmp_path / "refined.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = run_cli(["refine", "--ann", str(src), "--images", str(coco_dir / "images"), "--out", str(out),
                   "--engine", "sam_tiny", "--checkpoint", "none", "--precision", "fp32", "--iters", "1",
                   "--prompts", "box,point", "--no-negative-point", "--cebox-margin", "0"], monkeypatch)
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    res = json.loads(out.read_text())
    settings = res["info"]["sap_refine"]["settings"]
    assert settings["prompts"] == ["point", "box"] and settings["negative_point"] is False
    assert settings["cebox_margin"] == 0.0 and settings["iters"] == 1
    assert [a["id"] for a in res["annotations"]] == [a["id"] for a in sub["annotations"]]
    assert all("refine_iou" in a for a in res["annotations"])
