"""The command line as a user meets it first: help, env, usage errors."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _sap(*args):
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True)


def test_help_lists_every_stage_and_env_reports_versions_and_engines():
    r = _sap("--help")
    assert r.returncode == 0
    for cmd in ("proposals", "select", "refine", "train", "predict", "eval", "viz", "pipeline", "demo",
                "points", "corrupt", "env"):
        assert cmd in r.stdout
    r = _sap("env")
    assert r.returncode == 0
    import torch

    assert torch.__version__ in r.stdout and "engine detectron2" in r.stdout and "default device" in r.stdout


def test_usage_errors_exit_2_and_missing_files_say_so():
    r = _sap("proposals", "--nope")
    assert r.returncode == 2 and "No such option" in r.stderr
    r = _sap("points", "--gt", "/no/such/gt.json", "--out", "/tmp/x.json")
    assert r.returncode == 2 and r.stderr.strip() == "error: /no/such/gt.json does not exist or is not a file"
