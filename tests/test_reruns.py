"""Reruns never mix: content hashes, one shard layout per cache, one writer per output, torn journals.

(Refine's resume keyed on the checkpoint and image content is in test_refine_sam.py; the
proposal cache's kill-and-resume in test_proposals.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import subset_coco
from pseudolabel.core.bag_sources import load_bags
from pseudolabel.core.cache import CacheReader, shard_filename
from pseudolabel.core.errors import InputError
from pseudolabel.core.journal import append_record, read_journal
from pseudolabel.core.lock import lock_path, output_lock
from pseudolabel.core.points import derive_points
from pseudolabel.proposals.run import ProposalConfig, run_proposals

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def two_images(coco_gt, coco_dir, tmp_path):
    """Points of two photos, and a private copy of the photos that a test may change."""
    pts, _ = derive_points(subset_coco(coco_gt, 2, max_anns=2), "center")
    (tmp_path / "points.json").write_text(json.dumps(pts))
    images = tmp_path / "images"
    images.mkdir()
    for im in pts["images"]:
        shutil.copy(coco_dir / "images" / im["file_name"], images / im["file_name"])
    return tmp_path / "points.json", images, pts


def _repaint(path: Path) -> None:
    """Change an image's pixels, keeping its size."""
    arr = np.asarray(Image.open(path).convert("RGB")).copy()
    arr[: arr.shape[0] // 2] = 255 - arr[: arr.shape[0] // 2]
    Image.fromarray(arr).save(path, quality=95)


def _holder(target: Path) -> subprocess.Popen:
    """A separate process that takes the lock of ``target`` and sleeps (until killed)."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]);"
            "from pseudolabel.core.lock import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target), str(REPO)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


# ---- content hashes ------------------------------------------------------------------------------

def test_a_changed_image_is_recomputed_and_reported_and_select_refuses_stale_proposals(two_images, tiny_engine):
    from pseudolabel.selector import SelectConfig, run_select

    points, images, pts = two_images
    cache = points.parent / "cache"
    first = run_proposals(points, images, cache, ProposalConfig(precision="fp32"), engine=tiny_engine)
    assert first.done == 2
    before = load_bags(cache)
    changed = pts["images"][1]
    _repaint(images / changed["file_name"])

    # select sees that the cache describes other pixels than the folder holds now
    with pytest.raises(InputError, match=f"changed since their proposals were cached.*image {changed['id']}"):
        run_select(points, cache, points.parent / "pseudo.json", SelectConfig(method="sam-top1"), images=images)
    assert not (points.parent / "pseudo.json").exists()

    again = run_proposals(points, images, cache, ProposalConfig(precision="fp32"), engine=tiny_engine)
    assert again.skipped == 1 and again.done == 1 and again.changed == [changed["id"]]
    assert any("changed on disk" in line for line in again.lines())
    after = load_bags(cache)
    assert after[pts["images"][0]["id"]][0].rles == before[pts["images"][0]["id"]][0].rles
    assert after[changed["id"]][0].rles != before[changed["id"]][0].rles  # recomputed on the new pixels
    with CacheReader(cache) as r:
        assert sum(1 for _ in r.query("SELECT 1 FROM images")) == 2  # replaced, not added
    run_select(points, cache, points.parent / "pseudo.json", SelectConfig(method="sam-top1"), images=images)


def test_a_changed_sam_checkpoint_is_refused_by_the_cache(two_images, tmp_path):
    from pseudolabel.core.engines.loading import save_random_checkpoint

    points, images, _ = two_images
    ckpt = save_random_checkpoint("sam_tiny", tmp_path / "sam.pth", seed=1)
    cfg = ProposalConfig(engine="sam_tiny", checkpoint=str(ckpt), precision="fp32", device="cpu")
    run_proposals(points, images, tmp_path / "cache", cfg)
    save_random_checkpoint("sam_tiny", ckpt, seed=2)  # same path, other weights
    with pytest.raises(InputError, match="checkpoint_sha256"):
        run_proposals(points, images, tmp_path / "cache", cfg)


# ---- one layout per cache folder -----------------------------------------------------------------

def test_one_cache_folder_holds_one_shard_layout(two_images, tiny_engine):
    points, images, _ = two_images
    cache = points.parent / "cache"
    run_proposals(points, images, cache, ProposalConfig(precision="fp32", shard="0/1"), engine=tiny_engine)
    with pytest.raises(InputError, match="another layout"):
        run_proposals(points, images, cache, ProposalConfig(precision="fp32", shard="0/2"), engine=tiny_engine)
    assert [f.name for f in cache.glob("*.sqlite")] == [shard_filename(0, 1)]

    # a folder that mixes layouts anyway (files copied in by hand) is refused by every reader
    shutil.copy(cache / shard_filename(0, 1), cache / shard_filename(0, 3))
    with pytest.raises(InputError, match="mixes shard layouts"):
        load_bags(cache)

    summary = run_proposals(points, images, cache, ProposalConfig(precision="fp32", shard="1/2"),
                            overwrite=True, engine=tiny_engine)
    assert summary.done == 1 and [f.name for f in cache.glob("*.sqlite")] == [shard_filename(1, 2)]


# ---- one writer per output -----------------------------------------------------------------------

def test_the_lock_names_its_holder_and_a_killed_holder_does_not_block(tmp_path):
    target = tmp_path / "out.json"
    proc = _holder(target)
    try:
        with pytest.raises(InputError) as e:
            with output_lock(target):
                pass
        msg = str(e.value)
        assert str(lock_path(target)) in msg and f"process {proc.pid}" in msg and "\n" not in msg
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lock_path(target).exists()  # left behind by the killed process ...
    t0 = time.perf_counter()
    with output_lock(target):  # ... and taken over at once
        assert json.loads(lock_path(target).read_text())["pid"] == os.getpid()
    assert time.perf_counter() - t0 < 5 and not lock_path(target).exists()


def test_a_second_writer_on_the_same_output_is_refused(two_images, tiny_engine, monkeypatch, capsys):
    from conftest import run_cli

    points, images, _ = two_images
    cache = points.parent / "cache"
    shard = cache / shard_filename(0, 1)
    proc = _holder(shard)  # stands for a `sap proposals` still writing this cache
    try:
        rc = run_cli(["proposals", "--ann", str(points), "--images", str(images), "--out", str(cache),
                      "--engine", "sam_tiny", "--checkpoint", "none", "--precision", "fp32"], monkeypatch)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err[-1].startswith("error: ") and f"process {proc.pid}" in err[-1]
        assert str(lock_path(shard)) in err[-1] and not shard.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert run_proposals(points, images, cache, ProposalConfig(precision="fp32"), engine=tiny_engine).done == 2


# ---- journals ------------------------------------------------------------------------------------

def test_a_torn_last_line_is_dropped_and_cut_so_appends_start_clean(tmp_path):
    path = tmp_path / "j.jsonl"
    with open(path, "w") as f:
        append_record(f, {"digest": "d"})
        append_record(f, {"image_id": 1})
        f.write('{"image_id": 2, "annot')  # killed mid-line
    assert read_journal(path) == [{"digest": "d"}, {"image_id": 1}]
    assert read_journal(path, repair=True) == [{"digest": "d"}, {"image_id": 1}]
    with open(path, "a") as f:
        append_record(f, {"image_id": 3})
    assert read_journal(path) == [{"digest": "d"}, {"image_id": 1}, {"image_id": 3}]
    path.write_text('{"a": 1}\n{"b": 2}')  # a complete object without its newline is torn too
    assert read_journal(path) == [{"a": 1}]
    assert read_journal(tmp_path / "absent.jsonl") == []


def test_train_resume_survives_a_torn_metrics_line(tmp_path):
    from segtrain.run_folder import trim_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iter": 20, "loss": 1.0}\n{"iter": 40, "loss": 0.5}\n{"iter": 60, "lo')
    trim_metrics(path, 40)
    # the log says where it restarted: the window means after it cover the resumed iterations only
    assert [json.loads(x) for x in path.read_text().splitlines()] == [
        {"iter": 20, "loss": 1.0}, {"iter": 40, "loss": 0.5}, {"resumed_at": 40}]
    trim_metrics(path, 20)  # a second resume, earlier: the later restart mark goes with its lines
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"iter": 20, "loss": 1.0}, {"resumed_at": 20}]


def test_the_pipeline_reruns_proposals_for_a_changed_image_or_checkpoint(two_images, tmp_path):
    from pseudolabel.core.engines.loading import save_random_checkpoint
    from pseudolabel.pipeline import Pipeline, PipelineConfig

    points, images, pts = two_images
    ckpt = save_random_checkpoint("sam_tiny", tmp_path / "sam.pth", seed=1)

    def run() -> dict[str, str]:
        cfg = PipelineConfig(images=str(images), points=str(points), out=str(tmp_path / "run"),
                             sam={"engine": "sam_tiny", "checkpoint": str(ckpt), "precision": "fp32", "device": "cpu"},
                             proposals={"prompts": "point"})
        return {r.stage: r.status for r in Pipeline(cfg).run_stages(until="proposals")}

    cache = tmp_path / "run" / "2_proposals" / "cache"
    assert run() == {"points": "ran", "proposals": "ran"}
    assert run() == {"points": "skipped", "proposals": "skipped"}
    _repaint(images / pts["images"][0]["file_name"])
    assert run()["proposals"] == "ran"  # ... and the cache recomputed just that image
    metrics = json.loads((tmp_path / "run" / "2_proposals" / "stage.json").read_text())["metrics"]
    assert (metrics["images_computed"], metrics["images_changed"]) == (1, 1)
    assert metrics["points"] == len(pts["annotations"])
    save_random_checkpoint("sam_tiny", ckpt, seed=2)  # same path, other weights: computed anew
    assert run()["proposals"] == "ran"
    metrics = json.loads((tmp_path / "run" / "2_proposals" / "stage.json").read_text())["metrics"]
    assert metrics["images_computed"] == 2
    with CacheReader(cache) as r:
        assert r.config["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
