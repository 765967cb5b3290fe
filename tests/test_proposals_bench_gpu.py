"""scripts/bench_gpu.sh's CPU dry run: the tiny model, 2 images, every figure it reports."""

import json
import math
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_dry_run_reports_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([str(REPO / "scripts" / "bench_gpu.sh"), str(out), "--dry-run"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    fig = json.loads(out.read_text())
    assert fig["device"] == "CPU" and fig["images"] == 2
    (r,) = fig["engines"]
    assert r["engine"] == "sam_tiny" and r["encoder_path"] == "fast"
    assert set(r["encoder_images_per_s"]) == {"1", "2"} and all(v > 0 for v in r["encoder_images_per_s"].values())
    assert r["decoder_points_per_s"] > 0 and r["rle_masks_per_s"] > 0 and r["rle_mpixels_per_s"] > 0
    assert math.isnan(r["gpu_peak_gib"])  # no GPU: said, not made up
    assert "sam_tiny fp32 (fast): encoder images/s b1:" in res.stdout
