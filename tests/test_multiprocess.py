"""The multi-process paths, really run: ``torchrun --nproc_per_node 2`` on the CPU (gloo) and
``--shard i/n`` for proposals, select and train, detectron2's launcher without GPUs, and a rank
killed mid-run. Tiny inputs: four 240×320 demo scenes, the pocket SAM, R18 networks at 160 px.

Every process is started with a timeout, so a hung rank fails the test instead of the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from pseudolabel.core.cache import dump_cache
from pseudolabel.core.device import cores_per_process, loader_workers

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240
SAP = [sys.executable, "-c", "import sys, cli; sys.argv[0] = 'sap'; cli.main()"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "SAP_DIST_TIMEOUT": "60"}


def _torchrun(n: int) -> list[str]:
    """``torchrun --nproc_per_node n`` running ``sap`` from this checkout (gloo on the CPU)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
            "--no-python", *SAP]


def _sap(argv: list[str], ranks: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (_torchrun(ranks) if ranks > 1 else SAP) + argv
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S, cwd=REPO)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Four demo scenes, their points and a one-process proposal cache (pocket SAM)."""
    from pseudolabel.core.engines.loading import bundled_checkpoint
    from pseudolabel.pipeline.demo import make_demo_dataset

    tmp = tmp_path_factory.mktemp("mp")
    gt, images = make_demo_dataset(tmp / "data", n_images=4)
    _sap(["points", "--gt", str(gt), "--out", str(tmp / "points.json")])
    sam = ["--ann", str(tmp / "points.json"), "--images", str(images), "--engine", "sam_pocket",
           "--checkpoint", str(bundled_checkpoint("sam_pocket")), "--device", "cpu", "--prompts", "point,point_box"]
    _sap(["proposals", *sam, "--out", str(tmp / "cache1")])
    return tmp, images, sam


def _canonical(cache: Path) -> dict:
    """A cache's content regardless of which shard wrote which image."""
    d = dump_cache(cache)
    return {"config": d["config"], "images": sorted(map(str, d["images"])), "points": sorted(d["points"]),
            "proposals": d["proposals"]}


def test_proposals_under_torchrun_and_in_shards_equal_one_process(tiny):
    tmp, _, sam = tiny
    _sap(["proposals", *sam, "--out", str(tmp / "cache_tr")], ranks=2)
    for i in range(2):
        _sap(["proposals", *sam, "--out", str(tmp / "cache_sh"), "--shard", f"{i}/2"])
    assert len(list((tmp / "cache_tr").glob("shard-*-of-00002.sqlite"))) == 2
    one = _canonical(tmp / "cache1")
    assert _canonical(tmp / "cache_tr") == one
    assert _canonical(tmp / "cache_sh") == one


@pytest.mark.parametrize("method", ["mil", "sapnet"])
def test_select_under_torchrun_writes_one_output_equal_to_one_process(tiny, method):
    """Two ranks of 2 images each step = one process of 4: the same choices; the margins agree
    to 1e-4 (gloo sums the two ranks' gradients in another order than one process's batch)."""
    tmp, images, _ = tiny
    common = ["select", "--ann", str(tmp / "points.json"), "--proposals", str(tmp / "cache1"), "--images",
              str(images), "--method", method, "--epochs", "1", "--backbone", "resnet18", "--backbone-weights",
              "none", "--lr", "0.16", "--min-size", "128", "--max-size", "160", "--workers", "0",
              "--device", "cpu"]
    out2, out1 = tmp / f"{method}2" / "pseudo.json", tmp / f"{method}1" / "pseudo.json"
    _sap([*common, "--batch-size", "2", "--out", str(out2)], ranks=2)
    _sap([*common, "--batch-size", "4", "--out", str(out1)])
    assert sorted(p.name for p in out2.parent.iterdir() if p.suffix == ".json") == ["pseudo.json"]
    assert len(list(out2.parent.glob("*.selector/selector.pt"))) == 1
    two, one = (json.loads(p.read_text())["annotations"] for p in (out2, out1))
    assert [a["id"] for a in two] == [a["id"] for a in one]
    assert [a["sap"]["proposal_index"] for a in two] == [a["sap"]["proposal_index"] for a in one]
    assert [a["sap"]["margin"] for a in two] == pytest.approx([a["sap"]["margin"] for a in one], abs=1e-4)


def _descendants(pid: int) -> list[int]:
    """Process ids under ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _descendants(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b"\0".join(env):
            return pid
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
def test_train_under_torchrun_killed_rank_ends_with_a_sentence_and_the_rerun_resumes(tiny):
    """Rank 1 is killed after the first checkpoint: the job ends (no rank waits forever) with
    our sentence; the rerun with --resume continues from that checkpoint and finishes, and only
    rank 0 wrote checkpoints."""
    tmp, images, _ = tiny
    out = tmp / "train2"
    cfg = tmp / "train.yaml"
    cfg.write_text("warmup_iters: 1\nsteps: [6]\nmodel: {head_channels: 32, head_convs: 1, fpn_channels: 32, "
                   "mask_channels: 16, kernel_dim: 16}\n")
    pseudo = tmp / "mil1" / "pseudo.json"
    if not pseudo.is_file():  # the select test did not run first (-k): SAM's top-1 is enough here
        _sap(["select", "--ann", str(tmp / "points.json"), "--proposals", str(tmp / "cache1"),
              "--method", "sam-top1", "--out", str(pseudo)])
    argv = ["train", "--train", str(pseudo), "--images", str(images), "--out", str(out), "--engine", "torch",
            "--backbone", "resnet18", "--backbone-weights", "none", "--iters", "8", "--batch", "2",
            "--min-size", "128", "--max-size", "160", "--checkpoint-period", "2", "--workers", "0",
            "--device", "cpu", "--config", str(cfg)]
    job = subprocess.Popen(_torchrun(2) + argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not list(out.glob("model_000000*.pth")) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = _rank_pid(job.pid, 1)
        assert job.poll() is None and victim is not None, "the job ended before a rank could be killed"
        os.kill(victim, signal.SIGKILL)
        _, err = job.communicate(timeout=TIMEOUT_S)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0 and not (out / "model_final.pth").exists()
    assert "rank 0 of 2" in err and "rerun the same command" in err, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("error: ")]
    assert ours and "Traceback" not in err.split(ours[0])[0], err[-3000:]
    saved = (out / "last_checkpoint").read_text().strip()
    again = _sap([*argv, "--resume"], ranks=2)
    assert (out / "model_final.pth").is_file()
    done_before = int("".join(c for c in saved if c.isdigit()))
    assert 2 <= done_before < 8 and f"trained {8 - done_before} iterations (to 8)" in again.stdout
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert max(m.get("iter", 0) for m in metrics) >= 7


def test_detectron2_num_gpus_on_a_cpu_says_what_to_do_instead(tiny, monkeypatch, capsys):
    tmp, images, _ = tiny
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code = run_cli(["train", "--train", str(tmp / "points.json"), "--images", str(images), "--out",
                    str(tmp / "d2"), "--engine", "detectron2", "--num-gpus", "2"], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and "torchrun --nproc_per_node 2" in err and "--engine torch" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp / "d2").exists()


def test_data_loader_workers_follow_the_cores_per_process(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    assert cores_per_process(1) == 2 and cores_per_process(2) == 1 and cores_per_process(4) == 1
    assert loader_workers(2, 2) == 1 and loader_workers(4, 1) == 2 and loader_workers(0, 1) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert loader_workers(4) == 1
