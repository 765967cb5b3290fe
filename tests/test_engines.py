"""Every engine family through the same code paths as official checkpoints, without downloads.

Each engine is built from its package's own configuration with seeded random weights, saved in
its release format (SAM and HQ-SAM: the bare state dict; SAM 2: ``{"model": ...}``), and loaded
back through :func:`create_engine` exactly as an official checkpoint would be. The smallest
configuration of each family runs: ``sam_tiny``, ``hq_tiny`` (HQ-SAM's ViT at a small width),
``hq_vit_tiny`` (Light HQ-SAM's real config) and ``sam2.1_hiera_t`` (SAM 2.1's real config), on
two CC-BY COCO photos of tests/data. CI installs the ``sam2`` and ``hq`` extras: nothing skips.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from pseudolabel.core.cache import CacheReader, cache_files, dump_cache, load_embedding
from pseudolabel.core.engines.loading import create_engine, save_random_checkpoint, sha256_of
from pseudolabel.core.engines.registry import ENGINES, FAMILIES, availability, canonical_engine
from pseudolabel.core.errors import InputError
from pseudolabel.core.images import load_image_rgb
from pseudolabel.core.points import derive_points
from pseudolabel.proposals.run import ProposalConfig, run_proposals
from refine.instances import run_refine
from refine.refiner import RefineConfig

DATA = Path(__file__).parent / "data" / "coco_cc_by"
SMALLEST = ("sam_tiny", "hq_tiny", "hq_vit_tiny", "sam2.1_hiera_t")


def test_registry_names_layouts_and_digests():
    assert canonical_engine("vit_b") == "sam_vit_b" and canonical_engine("sam2.1_hiera_b+") == "sam2.1_hiera_b+"
    with pytest.raises(InputError, match="unknown engine 'sam3'; choose one of sam_vit_h"):
        canonical_engine("sam3")
    for name in ("sam_vit_h", "sam_vit_l", "sam_vit_b", "sam_tiny", "sam2.1_hiera_t", "sam2.1_hiera_s",
                 "sam2.1_hiera_b+", "sam2.1_hiera_l", "hq_vit_h", "hq_vit_l", "hq_vit_b"):
        assert name in ENGINES
    for spec in ENGINES.values():
        if spec.url is not None:  # every released checkpoint can be checked after download
            assert spec.sha256 or spec.md5, spec.name
            assert len(spec.sha256 or "") in (0, 64) and len(spec.md5 or "") in (0, 32)
    mib = {k: f.cached_bytes / 2 ** 20 for k, f in FAMILIES.items()}
    assert mib == {"sam": 2.0, "sam2": 8.0, "hq": 6.0}
    # CI installs both extras: every engine can run (a test that would skip fails instead)
    assert [n for n in ENGINES if availability(n) is not None] == []


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    """Two photos, two objects each, with centre points (the same for every engine)."""
    gt = json.loads((DATA / "annotations.json").read_text())
    keep = [im for im in gt["images"] if im["id"] in (89, 127)]
    anns = [a for im in keep for a in [a for a in gt["annotations"] if a["image_id"] == im["id"]
                                       and not a["iscrowd"]][:2]]
    sub = {**gt, "images": keep, "annotations": anns}
    tmp = tmp_path_factory.mktemp("photos")
    pts, _ = derive_points(sub, "center")
    (tmp / "points.json").write_text(json.dumps(pts))
    (tmp / "masks.json").write_text(json.dumps(sub))
    return {"points": tmp / "points.json", "masks": tmp / "masks.json", "n": len(anns), "images": keep}


@pytest.fixture(scope="module", params=SMALLEST)
def run(request, photos, tmp_path_factory) -> dict:
    """An engine loaded from a checkpoint file in its release format, and its proposal cache."""
    name = request.param
    tmp = tmp_path_factory.mktemp(name.replace(".", "_"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a small shared CPU a second thread mostly waits for a core
    ckpt = save_random_checkpoint(name, tmp / "random.pt", seed=1)
    engine = create_engine(name, str(ckpt), "cpu", "fp32")
    cfg = ProposalConfig(engine=name, prompts="point,point_box", save_embeddings=True)
    summary = run_proposals(photos["points"], DATA / "images", tmp / "cache", cfg, engine=engine)
    yield {"name": name, "engine": engine, "ckpt": ckpt, "cache": tmp / "cache", "summary": summary,
           "tmp": tmp, "cfg": cfg}
    torch.set_num_threads(threads)


def test_key_policy_missing_stops_every_family_unexpected_stops_all_but_hq(tmp_path, caplog):
    sd = torch.load(save_random_checkpoint("hq_tiny", tmp_path / "hq.pth"), weights_only=True)
    torch.save({**sd, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    sap_logger = logging.getLogger("sap")  # it may not propagate (the CLI's setup)
    sap_logger.addHandler(caplog.handler)
    try:
        assert create_engine("hq_tiny", str(tmp_path / "extra.pth")).name == "hq_tiny"  # HQ-SAM's own rule
    finally:
        sap_logger.removeHandler(caplog.handler)
    assert "1 keys engine hq_tiny does not use (first: extra.weight)" in caplog.text
    del sd["mask_decoder.hf_token.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(InputError, match="does not fit engine hq_tiny \\(missing mask_decoder.hf_token.weight"):
        create_engine("hq_tiny", str(tmp_path / "missing.pth"))
    sam = torch.load(save_random_checkpoint("sam_tiny", tmp_path / "sam.pth"), weights_only=True)
    torch.save({**sam, "extra.weight": torch.zeros(1)}, tmp_path / "sam_extra.pth")
    with pytest.raises(InputError, match="does not fit engine sam_tiny \\(unexpected extra.weight"):
        create_engine("sam_tiny", str(tmp_path / "sam_extra.pth"))


@pytest.fixture(scope="module")
def fresh(run, photos) -> dict:
    """The first photo and its fp32 encoding (one encoder run shared by the tests below)."""
    img = photos["images"][0]
    rgb = load_image_rgb(DATA / "images" / img["file_name"])
    return {"image": img, "rgb": rgb, "emb": run["engine"].encode(rgb)}


def test_checkpoint_in_release_format_loads_like_an_official_one(run):
    name, engine, ckpt = run["name"], run["engine"], run["ckpt"]
    assert engine.checkpoint_id == sha256_of(ckpt) and engine.name == name
    saved = torch.load(ckpt, weights_only=True)
    state = saved["model"] if ENGINES[name].family == "sam2" else saved
    own = engine.model.state_dict()
    assert set(state) == set(own)
    for k in list(own)[::max(1, len(own) // 10)]:
        assert torch.equal(own[k], state[k]), k
    other = "hq_tiny" if name == "sam_tiny" else "sam_tiny"
    with pytest.raises(InputError, match=f"does not fit engine {other}"):
        create_engine(other, str(ckpt), "cpu", "fp32")


def test_shapes_three_outputs_and_single_output(run, fresh):
    engine, img, emb = run["engine"], fresh["image"], fresh["emb"]
    fam = FAMILIES[ENGINES[run["name"]].family]
    assert {k: tuple(v.shape) for k, v in emb.tensors().items()} == dict(fam.layout)
    assert emb.original_size == (img["height"], img["width"])
    pts = np.array([[[100.0, 120.0]], [[300.0, 200.0]], [[500.0, 400.0]]])
    low, iou = engine.decode(emb, pts, np.ones((3, 1)))
    assert low.shape == (3, 3, 256, 256) and iou.shape == (3, 3)
    # one prompt at a time gives the same logits and scores as the batch
    for i in range(3):
        low_i, iou_i = engine.decode(emb, pts[i:i + 1], np.ones((1, 1)))
        torch.testing.assert_close(low_i[0], low[i], atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(iou_i[0], iou[i], atol=2e-5, rtol=1e-4)
    # points + box + mask prompt (every SAMRefiner prompt) and the single-output mode
    box = np.array([[50.0, 60.0, 400.0, 300.0]] * 3)
    labels = np.array([[1, 0]] * 3)
    two = np.concatenate([pts, pts + 20], axis=1)
    low2, iou2 = engine.decode(emb, two, labels, boxes=box, mask_input=low[:, :1], multimask=False)
    assert low2.shape == (3, 1, 256, 256) and iou2.shape == (3, 1)
    masks = engine.upscale(low, emb)
    assert masks.shape == (3, 3, img["height"], img["width"]) and masks.dtype == torch.bool


def _official_predictor_outputs(run, rgb, point):
    """The package's own predictor on the same model and prompt: (low-res logits, IoUs)."""
    engine, family = run["engine"], ENGINES[run["name"]].family
    coords, labels = np.array([point]), np.array([1])
    if family == "sam2":
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        pred = SAM2ImagePredictor(engine.model)
        pred.set_image(rgb)
        _, iou, low = pred.predict(coords, labels, multimask_output=True, return_logits=True)
        return torch.as_tensor(low)[None], torch.as_tensor(iou)[None], pred._features["image_embed"]
    if family == "hq":
        from segment_anything_hq import SamPredictor

        from pseudolabel.core.engines.sam1 import resize_longest_side

        pred = SamPredictor(engine.model)
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        pred.set_torch_image(resize_longest_side(x, engine.input_size(*rgb.shape[:2])), rgb.shape[:2])
        _, iou, low = pred.predict(coords, labels, multimask_output=True, return_logits=True)
        return torch.as_tensor(low)[None], torch.as_tensor(iou)[None], pred.features
    pytest.skip("SAM v1 is compared with segment_anything in test_foundation_sam.py")


def test_outputs_agree_with_the_packages_own_predictor(run, fresh):
    """SAM 2.1: the 3 outputs are SAM2ImagePredictor's. HQ-SAM: its predictor returns one mask,
    the best of SAM's three plus the HQ token; ours has that as the top-scored of three."""
    if run["name"] == "sam_tiny":
        return  # segment_anything's own check: test_foundation_sam.py
    engine, rgb, emb = run["engine"], fresh["rgb"], fresh["emb"]
    point = [210.0, 150.0]
    ref_low, ref_iou, ref_embed = _official_predictor_outputs(run, rgb, point)
    torch.testing.assert_close(emb.features, ref_embed.float(), atol=2e-3, rtol=1e-3)
    low, iou = engine.decode(emb, np.array([[point]]), np.ones((1, 1)))
    if ENGINES[run["name"]].family == "sam2":
        torch.testing.assert_close(iou, ref_iou.float(), atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(low.clamp(-32, 32), ref_low.float(), atol=2e-2, rtol=1e-3)
    else:
        best = int(iou[0].argmax())
        assert ref_low.shape[1] == 1
        torch.testing.assert_close(iou[:, best], ref_iou[:, 0].float(), atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(low[:, best], ref_low[:, 0].float(), atol=2e-2, rtol=1e-3)
    # each mask is its logits > 0 at the image size, the geometry the predictor upsamples with
    assert torch.equal(engine.upscale(low, emb), engine.upscale(low, emb, threshold=None) > 0)


def test_proposal_bags_keep_sapnets_six_proposals(run, photos):
    with CacheReader(run["cache"]) as reader:
        assert reader.config["engine"] == run["name"]
        bags = [b for bs in reader.bags().values() for b in bs]
    assert len(bags) == photos["n"] == run["summary"].points
    for bag in bags:
        assert list(bag.kinds) == ["point"] * 3 + ["point_box"] * 3 and list(bag.ranks) == [0, 1, 2] * 2
        assert len(bag.rles) == 6 and bag.boxes.shape == (6, 4)


def test_cached_embeddings_give_the_fresh_encoders_answers(run, fresh):
    engine, img = run["engine"], fresh["image"]
    with CacheReader(run["cache"]) as reader:
        sha = next(r["sha256"] for r in reader.images() if r["image_id"] == img["id"])
    cached = load_embedding(run["cache"], img["id"], sha, run["name"], engine.checkpoint_id)
    fresh = fresh["emb"].through_fp16()
    assert cached.tensors().keys() == fresh.tensors().keys()
    for k, v in fresh.tensors().items():
        assert torch.equal(cached.tensors()[k], v), k
    pts = np.array([[[120.0, 90.0]]])
    a, _ = engine.decode(cached, pts, np.ones((1, 1)))
    b, _ = engine.decode(fresh, pts, np.ones((1, 1)))
    assert torch.equal(a, b)
    assert load_embedding(run["cache"], img["id"], sha, "sam_vit_b", engine.checkpoint_id) is None


def test_a_killed_run_resumes_and_another_engines_cache_is_refused(run, photos):
    before = dump_cache(run["cache"])
    shard = cache_files(run["cache"])[0]
    with sqlite3.connect(shard) as conn:  # as if killed before the last image's commit
        conn.execute("DELETE FROM images WHERE image_id = (SELECT max(image_id) FROM images)")
    summary = run_proposals(photos["points"], DATA / "images", run["cache"], run["cfg"], engine=run["engine"])
    assert (summary.done, summary.skipped) == (1, 1)
    assert dump_cache(run["cache"]) == before
    other = "sam_tiny" if run["name"] != "sam_tiny" else "hq_tiny"
    with pytest.raises(InputError, match=f"holds proposals of engine {run['name']}, not {other}"):
        run_proposals(photos["points"], DATA / "images", run["cache"], ProposalConfig(engine=other, checkpoint="none"))


def test_refine_with_every_prompt_reads_the_engines_cache(run, photos):
    engine = run["engine"]
    cfg = RefineConfig(engine=run["name"], prompts=("point", "box", "mask"), iters=2, cebox_margin=0.1,
                       embeddings=str(run["cache"]), precision="fp32")
    encoded = engine.timings.images
    summary = run_refine(photos["masks"], DATA / "images", run["tmp"] / "refined.json", cfg, engine=engine,
                          resume=False)
    assert engine.timings.images == encoded  # every embedding came from the cache
    assert summary.refined == photos["n"] and not summary.failed
    out = json.loads((run["tmp"] / "refined.json").read_text())
    assert len(out["annotations"]) == photos["n"]
    assert all(a["segmentation"]["size"] for a in out["annotations"])
    other = "sam_tiny" if run["name"] != "sam_tiny" else "hq_tiny"
    with pytest.raises(InputError, match=f"holds embeddings of engine {run['name']}, not {other}"):
        run_refine(photos["masks"], DATA / "images", run["tmp"] / "x.json",
                    RefineConfig(engine=other, checkpoint="none", embeddings=str(run["cache"])))


def test_env_cli_and_a_missing_package_say_what_to_install(monkeypatch, capsys):
    import importlib.util

    from conftest import run_cli

    assert run_cli(["env"], monkeypatch) == 0
    out = capsys.readouterr().out
    for name in ENGINES:
        assert f"engine {name}" in out
    assert "engine sam2.1_hiera_b+  available" in out
    code = run_cli(["proposals", "--ann", "a.json", "--images", ".", "--out", "c", "--engine", "sam3"], monkeypatch)
    assert code == 2 and "unknown engine 'sam3'" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "sam2" else real(n, *a))
    assert availability("sam2.1_hiera_t") == "sam2 not installed: pip install 'sap[sam2]' (SAM 2.1 from the package index)"
    with pytest.raises(InputError, match="engine sam2.1_hiera_t cannot run: sam2 not installed"):
        create_engine("sam2.1_hiera_t", "none")


def test_importing_an_engine_family_is_lazy():
    import subprocess
    import sys

    code = ("import sys; from pseudolabel.core.engines import registry, loading, base; "
            "from pseudolabel.proposals import run; from refine import refiner; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sam2', 'segment_anything_hq', 'timm', 'hydra'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"
