"""`sap eval`: table + atomic JSON, comparison mode, one sentence and exit 2 on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from pseudolabel.core.rle import decode_rle, encode_mask, segmentation_to_rle


def _shifted(gt: dict, dx: int) -> dict:
    """A copy of ``gt`` with every mask rolled ``dx`` pixels to the right."""
    out = json.loads(json.dumps(gt))
    sizes = {im["id"]: (im["height"], im["width"]) for im in out["images"]}
    for a in out["annotations"]:
        h, w = sizes[a["image_id"]]
        a["segmentation"] = encode_mask(np.roll(decode_rle(segmentation_to_rle(a["segmentation"], h, w)), dx, axis=1))
    return out


def test_eval_compares_pseudo_files_and_predictions(small_gt, tmp_path, monkeypatch, capsys):
    gt = json.loads(small_gt.read_text())
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps(_shifted(gt, 8)))
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps([{"image_id": a["image_id"], "category_id": a["category_id"],
                                 "segmentation": a["segmentation"], "score": 1.0} for a in gt["annotations"]]))
    out = tmp_path / "m" / "metrics.json"
    rc = run_cli(["eval", "--gt", str(small_gt), "--pseudo", str(small_gt), "--pseudo", str(shifted),
               "--pred", str(pred), "--name", "perfect", "--name", "shift8", "--out", str(out)], monkeypatch)
    assert rc == 0
    text = capsys.readouterr().out
    header = text.splitlines()[0].split()
    assert header == ["metric", "perfect", "shift8", "pred"]
    report = json.loads(out.read_text())
    res = report["results"]
    assert res["perfect"]["overall"]["mask_miou"] == 1.0
    assert 0.3 < res["shift8"]["overall"]["mask_miou"] < 1.0
    assert res["pred"]["ap"]["AP"] == pytest.approx(100.0)
    assert "per_annotation" not in res["perfect"]
    assert not list(out.parent.glob(".*.tmp"))  # atomic write leaves no temporary file


@pytest.mark.parametrize("case", ["malformed", "no_masks", "ids_match_nothing", "nothing_to_measure"])
def test_eval_bad_input_exits_2_with_one_sentence(case, small_gt, tmp_path, monkeypatch, capsys):
    gt = json.loads(small_gt.read_text())
    bad = tmp_path / "bad.json"
    gt_arg = str(small_gt)
    if case == "malformed":
        bad.write_text('{"images": [')
    elif case == "no_masks":
        for a in gt["annotations"]:
            a.pop("segmentation")
        gt_arg = str(tmp_path / "gt_nomask.json")
        (tmp_path / "gt_nomask.json").write_text(json.dumps(gt))
        bad = small_gt
    elif case == "ids_match_nothing":
        for a in gt["annotations"]:
            a["id"] += 10**9
        bad.write_text(json.dumps(gt))
    argv = ["eval", "--gt", gt_arg] + ([] if case == "nothing_to_measure" else ["--pseudo", str(bad)])
    out = tmp_path / "never.json"
    rc = run_cli(argv + ["--out", str(out)], monkeypatch)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
