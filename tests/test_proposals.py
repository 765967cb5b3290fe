"""`sap proposals` end to end with the tiny SAM on real COCO images: cache, resume, kill, shards."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, subset_coco
from pseudolabel.core.bag_sources import load_bags
from pseudolabel.core.cache import CacheReader, cache_files, dump_cache, load_embedding
from pseudolabel.core.errors import InputError
from pseudolabel.core.points import derive_points
from pseudolabel.proposals.run import ProposalConfig, run_proposals
from pseudolabel.core.rle import decode_rle, rle_area, rle_to_bbox_xywh
from pseudolabel.core.sapnet_format import export_sapnet, read_sapnet

REPO = Path(__file__).resolve().parents[1]


def _point_file(coco_gt, tmp_path, n_images=3, max_anns=2, name="points.json"):
    pts, _ = derive_points(subset_coco(coco_gt, n_images, max_anns=max_anns), "center")
    path = tmp_path / name
    path.write_text(json.dumps(pts))
    return path, pts


@pytest.fixture(scope="module")
def cache_run(coco_gt, coco_dir, tmp_path_factory, tiny_engine):
    tmp = tmp_path_factory.mktemp("prop")
    points, pts = _point_file(coco_gt, tmp)
    cfg = ProposalConfig(prompts="point,point_box", save_embeddings=True)
    summary = run_proposals(points, coco_dir / "images", tmp / "cache", cfg, engine=tiny_engine)
    return tmp, points, pts, summary


def test_every_point_gets_three_masks_per_prompt_kind(cache_run, coco_dir, tiny_engine):
    tmp, points, pts, summary = cache_run
    n = len(pts["annotations"])
    assert summary.done == 3 and summary.points == n and summary.proposals == 6 * n and not summary.failed
    bags = load_bags(tmp / "cache", points_json=points)
    flat = [b for bs in bags.values() for b in bs]
    assert sorted(b.ann_id for b in flat) == sorted(a["id"] for a in pts["annotations"])
    images = {im["id"]: im for im in pts["images"]}
    for bag in flat:
        assert bag.kinds == ["point"] * 3 + ["point_box"] * 3
        assert bag.ranks.tolist() == [0, 1, 2, 0, 1, 2]
        im = images[bag.image_id]
        for rle, box, score in zip(bag.rles, bag.boxes, bag.scores):
            assert decode_rle(rle).shape == (im["height"], im["width"])
            x, y, w, h = rle_to_bbox_xywh(rle)
            np.testing.assert_allclose(box, [x, y, x + w, y + h])
            assert np.isfinite(score)
    # the stored embedding is the encoder's output (fp16), and is found only for the same image bytes
    image_id = flat[0].image_id
    with CacheReader(tmp / "cache") as r:
        row = next(x for x in r.images() if x["image_id"] == image_id)
    emb = load_embedding(tmp / "cache", image_id, row["sha256"], "tiny", "random-init")
    from pseudolabel.core.images import load_image_rgb

    fresh = tiny_engine.encode(load_image_rgb(coco_dir / "images" / row["file_name"]))
    assert emb.input_size == fresh.input_size and emb.original_size == fresh.original_size
    np.testing.assert_allclose(emb.features.numpy(), fresh.features.numpy(), atol=2e-2, rtol=1e-2)
    assert load_embedding(tmp / "cache", image_id, "0" * 64, "tiny", "random-init") is None
    assert load_embedding(tmp / "cache", image_id, row["sha256"], "vit_b", "random-init") is None


def test_rerun_skips_finished_images_and_changes_nothing(cache_run, coco_dir, tiny_engine):
    tmp, points, _, _ = cache_run
    before = dump_cache(tmp / "cache")
    again = run_proposals(points, coco_dir / "images", tmp / "cache",
                          ProposalConfig(prompts="point,point_box", save_embeddings=True), engine=tiny_engine)
    assert again.done == 0 and again.skipped == 3
    assert dump_cache(tmp / "cache") == before


def test_other_configuration_is_refused_unless_overwrite(cache_run, coco_dir, tiny_engine, tmp_path):
    import shutil

    tmp, points, _, _ = cache_run
    shutil.copytree(tmp / "cache", tmp_path / "cache")
    with pytest.raises(InputError, match="prompt_kinds"):
        run_proposals(points, coco_dir / "images", tmp_path / "cache",
                      ProposalConfig(prompts="point", save_embeddings=True), engine=tiny_engine)
    summary = run_proposals(points, coco_dir / "images", tmp_path / "cache",
                            ProposalConfig(prompts="point", save_embeddings=True), overwrite=True, engine=tiny_engine)
    assert summary.done == 3 and summary.skipped == 0
    assert all(len(b) == 3 for bs in load_bags(tmp_path / "cache").values() for b in bs)


def test_a_different_point_file_is_detected_by_readers(cache_run, coco_gt, tmp_path):
    tmp, points, pts, _ = cache_run
    moved = json.loads(json.dumps(pts))
    moved["annotations"][0]["point"][0] += 1.0
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    with pytest.raises(InputError, match="different point file"):
        load_bags(tmp / "cache", points_json=tmp_path / "moved.json")


def test_sapnet_export_import_round_trip(cache_run, tmp_path):
    tmp, points, _, _ = cache_run
    data = export_sapnet(tmp / "cache", points)
    ann = data["annotations"][0]
    assert len(ann["bbox"]) == len(ann["segmentation"]) == len(ann["score"]) == 6 and "point" in ann
    (tmp_path / "sapnet.json").write_text(json.dumps(data))
    back = read_sapnet(tmp_path / "sapnet.json")
    orig = load_bags(tmp / "cache")
    assert back.keys() == orig.keys()
    for image_id in orig:
        for a, b in zip(orig[image_id], back[image_id]):
            assert (a.ann_id, a.category_id, a.point, a.kinds) == (b.ann_id, b.category_id, b.point, b.kinds)
            np.testing.assert_allclose(a.boxes, b.boxes)
            np.testing.assert_allclose(a.scores, b.scores)
            assert a.rles == b.rles and a.ranks.tolist() == b.ranks.tolist()
    first = next(x for x in data["annotations"] if x["id"] == orig[image_id][0].ann_id)
    assert first["area"] == max(rle_area(orig[image_id][0].rles[0]), 1)  # a scalar, as the official loader needs
    assert first["scores"] == first["score"][:3] and first["true_bbox"][2:] == [1.0, 1.0]


def test_failed_images_are_recorded_and_the_run_goes_on(coco_gt, coco_dir, tmp_path, tiny_engine):
    points, pts = _point_file(coco_gt, tmp_path, n_images=3, max_anns=1)
    images = tmp_path / "images"
    images.mkdir()
    names = [im["file_name"] for im in pts["images"]]
    os.symlink(coco_dir / "images" / names[0], images / names[0])
    (images / names[1]).write_bytes(b"\xff\xd8 truncated jpeg")
    # names[2] is missing
    summary = run_proposals(points, images, tmp_path / "cache", ProposalConfig(), engine=tiny_engine)
    assert summary.done == 1 and len(summary.failed) == 2
    reasons = dict(summary.failed)
    assert "cannot be read" in reasons[pts["images"][1]["id"]] and "missing" in reasons[pts["images"][2]["id"]]
    with CacheReader(tmp_path / "cache") as r:
        status = {x["image_id"]: x["status"] for x in r.images()}
    assert sorted(status.values()) == ["done", "failed", "failed"]
    os.symlink(coco_dir / "images" / names[2], images / names[2])  # fixed: a rerun retries it
    again = run_proposals(points, images, tmp_path / "cache", ProposalConfig(), engine=tiny_engine)
    assert again.skipped == 1 and again.done == 1 and len(again.failed) == 1


def test_empty_annotation_list_gives_an_empty_cache(coco_gt, coco_dir, tmp_path, tiny_engine):
    sub = subset_coco(coco_gt, 2)
    sub["annotations"] = []
    (tmp_path / "p.json").write_text(json.dumps(sub))
    summary = run_proposals(tmp_path / "p.json", coco_dir / "images", tmp_path / "c", engine=tiny_engine)
    assert summary.done == 2 and summary.proposals == 0
    assert load_bags(tmp_path / "c") == {}


def test_killed_run_resumes_to_exactly_the_uninterrupted_content(coco_gt, coco_dir, tmp_path, tiny_engine,
                                                                 monkeypatch, capsys):
    points, _ = _point_file(coco_gt, tmp_path, n_images=6, max_anns=2)
    run_proposals(points, coco_dir / "images", tmp_path / "ref", ProposalConfig(precision="fp32"),
                  engine=tiny_engine)
    args = ["proposals", "--ann", points, "--images", coco_dir / "images", "--out", tmp_path / "killed",
            "--engine", "sam_tiny", "--checkpoint", "none", "--precision", "fp32"]
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "killed" / "shard-00000-of-00001.sqlite"
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
                    done = c.execute("SELECT count(*) FROM images").fetchone()[0]
            except sqlite3.Error:
                done = 0
            if done >= 2:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_images = len(json.loads(points.read_text())["images"])
    assert 2 <= done < n_images, "the kill must land mid-run"
    # the killed run's lock file is still there, but nobody holds it: the rerun takes it over
    assert run_cli([str(a) for a in args], monkeypatch) == 0
    assert "already cached" in capsys.readouterr().out
    assert dump_cache(tmp_path / "killed") == dump_cache(tmp_path / "ref")


def test_cli_shards_bad_input_and_export(coco_gt, coco_dir, tmp_path, monkeypatch, capsys, caplog):
    points, pts = _point_file(coco_gt, tmp_path, n_images=3, max_anns=1)
    # --model tiny: the deprecated spelling of --engine sam_tiny still works, with a warning
    base = ["--images", str(coco_dir / "images"), "--model", "tiny", "--checkpoint", "none", "--precision", "fp32"]

    def sap(*args):
        rc = run_cli([str(a) for a in args], monkeypatch)
        out = capsys.readouterr()
        return rc, out.out, out.err

    for shard in ("0/2", "1/2"):
        caplog.clear()
        rc, _, err = sap("proposals", "--ann", points, "--out", tmp_path / "sharded", "--shard", shard, *base)
        assert rc == 0, err
        assert "--model tiny is deprecated; use --engine sam_tiny" in err + caplog.text
    assert len(cache_files(tmp_path / "sharded")) == 2
    bags = load_bags(tmp_path / "sharded", points_json=points)
    assert sorted(bags) == sorted(im["id"] for im in pts["images"])
    # point prompts alone give 3 proposals: the SAPNet format needs 6, so the export refuses
    rc, _, err = sap("proposals", "export", tmp_path / "sharded", "--out", tmp_path / "s.json", "--ann", points)
    assert rc == 2 and "exactly 6" in err and not (tmp_path / "s.json").exists()
    (tmp_path / "bad.json").write_text("{not json")
    rc, _, err = sap("proposals", "--ann", tmp_path / "bad.json", "--out", tmp_path / "x", *base)
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error:")
    assert "not valid JSON" in err and not (tmp_path / "x").exists()
    rc, _, err = sap("proposals", "--ann", points, "--out", tmp_path / "y", "--shard", "3/2", *base)
    assert rc == 2 and "--shard" in err
    (tmp_path / "imgs").mkdir()  # no image files: every image fails, the run finishes, exit 1
    rc, out, _ = sap("proposals", "--ann", points, "--out", tmp_path / "z", "--images", tmp_path / "imgs",
                     *base[2:])
    assert rc == 1 and out.count("failed: image") == 3
