"""`--reference official|paper`, per-rule overrides, `--dump-prompts` and `sap viz prompts`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from pseudolabel.core.errors import InputError
from pseudolabel.core.rle import decode_rle, segmentation_to_rle
from refine.distance import chamfer_maps
from refine.prompts import negative_point, positive_point
from refine.reference import RULES, resolve_rules
from refine.refiner import RefineConfig, engine_for, upscale_masks

DATA = Path(__file__).parent / "data" / "coco_cc_by"


def test_references_and_overrides():
    official, paper = resolve_rules("official"), resolve_rules("paper")
    assert (official.distance, official.cebox_margin, official.strength) == ("chamfer", 0.0, 30.0)
    assert (paper.distance, paper.cebox_margin, paper.strength) == ("euclidean", 0.1, 15.0)
    assert official.negative_fallback == "origin" and official.mask_outside == "gaussian"
    assert resolve_rules("official", distance="euclidean").distance == "euclidean"
    assert resolve_rules("paper", cebox_margin=None) == RULES["paper"]  # None = not given
    with pytest.raises(ValueError, match="distance must be one of"):
        resolve_rules("official", distance="geodesic")
    with pytest.raises(ValueError, match="unknown reference"):
        resolve_rules("code")
    assert RefineConfig().reference == "official" and RefineConfig().rules == RULES["official"]
    with pytest.raises(InputError, match="--reference must be one of"):
        RefineConfig(reference="fastest")
    with pytest.raises(InputError, match="stm must be one of"):
        RefineConfig(stm="best")
    settings = RefineConfig(reference="paper", cebox_margin=0.0).result_settings()
    assert settings["reference"] == "paper" and settings["rules"]["cebox_margin"] == 0.0
    assert settings["rules"]["distance"] == "euclidean"


def test_sam_upscale_is_sams_two_step_resize(tiny_engine):
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(0)
    low = torch.randn(2, 1, 256, 256, generator=g)
    emb = SimpleNamespace(input_size=(683, 1024), original_size=(428, 640))
    want = F.interpolate(low, (1024, 1024), mode="bilinear", align_corners=False)[..., :683, :1024]
    want = F.interpolate(want, (428, 640), mode="bilinear", align_corners=False)[:, 0] > 0
    got = upscale_masks(tiny_engine, low, emb, "sam")
    assert np.array_equal(got, want.numpy())
    direct = upscale_masks(tiny_engine, low, emb, "direct")
    agree = (direct == got).mean()
    assert 0.9 < agree < 1.0  # one bilinear sampling: same geometry, other rounding


@pytest.fixture(scope="module")
def one_image(tmp_path_factory) -> tuple[Path, dict]:
    coco = json.loads((DATA / "annotations.json").read_text())
    img = next(im for im in coco["images"] if im["id"] == 30)
    sub = {**coco, "images": [img], "annotations": [a for a in coco["annotations"] if a["image_id"] == 30]}
    path = tmp_path_factory.mktemp("ref") / "coarse.json"
    path.write_text(json.dumps(sub))
    return path, sub


def _refine(one_image, tmp_path, monkeypatch, *extra) -> tuple[int, Path, Path]:
    src, _ = one_image
    out, dump = tmp_path / "refined.json", tmp_path / "prompts.jsonl"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = run_cli(["refine", "--ann", str(src), "--images", str(DATA / "images"), "--out", str(out),
                      "--engine", "sam_tiny", "--checkpoint", "none", "--precision", "fp32", "--iters", "2",
                      "--dump-prompts", str(dump), *extra], monkeypatch)
    finally:
        torch.set_num_threads(n)
    return rc, out, dump


def test_dump_prompts_lines_are_the_official_first_iteration_prompts(one_image, tmp_path, monkeypatch):
    rc, out, dump = _refine(one_image, tmp_path, monkeypatch)
    assert rc == 0
    lines = [json.loads(x) for x in dump.read_text().splitlines()]
    _, sub = one_image
    ids = [a["id"] for a in sub["annotations"]]
    assert [(r["id"], r["iteration"]) for r in lines] == [(i, k) for i in ids for k in range(2)]
    assert all(set(r) == {"id", "iteration", "pos", "neg", "box", "cebox"} for r in lines)
    img = sub["images"][0]
    for a, first in zip(sub["annotations"], lines[::2]):
        m = decode_rle(segmentation_to_rle(a["segmentation"], img["height"], img["width"]))
        mp = chamfer_maps([m])[0]
        assert first["pos"] == [list(positive_point(mp))]
        assert first["neg"] == [list(negative_point(mp, "box_half_open", "origin"))]
        assert first["box"] == list(mp.box) and first["cebox"] is None  # CEBox is off officially
        assert all(isinstance(v, int) for p in first["pos"] + first["neg"] for v in p)
    settings = json.loads(out.read_text())["info"]["sap_refine"]["settings"]
    assert settings["reference"] == "official" and settings["rules"]["distance"] == "chamfer"


def test_paper_reference_and_config_overrides_from_the_command_line(one_image, tmp_path, monkeypatch):
    cfg = tmp_path / "rules.yaml"
    cfg.write_text("distance: chamfer\nnegative_region: box_half_open\n")
    rc, out, dump = _refine(one_image, tmp_path, monkeypatch, "--reference", "paper", "--config", str(cfg),
                            "--prompts", "point,box")
    assert rc == 0
    rules = json.loads(out.read_text())["info"]["sap_refine"]["settings"]["rules"]
    assert rules["distance"] == "chamfer" and rules["negative_region"] == "box_half_open"
    assert rules["cebox_margin"] == 0.1 and rules["strength"] == 15.0  # the rest from the paper
    first = json.loads(dump.read_text().splitlines()[0])
    assert first["cebox"] is not None and first["box"] == first["cebox"]  # CEBox ran


def test_bad_reference_is_one_sentence(one_image, tmp_path, monkeypatch, capsys):
    rc, _, _ = _refine(one_image, tmp_path, monkeypatch, "--reference", "newest")
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--reference must be one of official, paper" in err[0]


def test_dump_resumes_and_viz_draws_it(one_image, tmp_path, monkeypatch):
    from refine.instances import _settings_digest, partial_path
    from pseudolabel.core.images import file_sha256
    from PIL import Image

    src, sub = one_image
    out = tmp_path / "refined.json"
    # a partial file from an interrupted run made without --dump-prompts: its image is redone
    cfg = RefineConfig(engine="sam_tiny", checkpoint="none", precision="fp32", iters=2)
    sam = engine_for(cfg).info()  # what the run's engine reports: the weights' digest
    partial_path(out).write_text(json.dumps({"digest": _settings_digest(file_sha256(src), cfg, sam)}) + "\n"
                                 + json.dumps({"image_id": 30, "annotations": sub["annotations"], "kept": 0,
                                               "sha256": file_sha256(DATA / "images" / "000000000030.jpg")}) + "\n")
    rc, out, dump = _refine(one_image, tmp_path, monkeypatch)
    assert rc == 0 and len(dump.read_text().splitlines()) == 2 * len(sub["annotations"])
    viz = tmp_path / "viz"
    rc = run_cli(["viz", "prompts", "--dump", str(dump), "--ann", str(src), "--images", str(DATA / "images"),
                  "--out", str(viz)], monkeypatch)
    assert rc == 0
    pic = np.asarray(Image.open(viz / "000000000030.png").convert("RGB"))
    raw = np.asarray(Image.open(DATA / "images" / "000000000030.jpg").convert("RGB"))
    first = json.loads(dump.read_text().splitlines()[0])
    x, y = first["pos"][0]
    assert pic[y, x].tolist() == [40, 220, 40]  # the positive point, green
    x0, y0, x1, y1 = first["box"]
    assert not np.array_equal(pic[y0, x0:x1], raw[y0, x0:x1])  # the box outline
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    assert run_cli(["viz", "prompts", "--dump", str(bad), "--ann", str(src), "--images", str(DATA / "images"),
                    "--out", str(viz)], monkeypatch) == 2
