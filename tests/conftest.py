"""Shared fixtures: the real COCO subset in ../shared/data, read in place (never copied)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COCO100 = Path(os.environ.get("SAP_COCO100", REPO.parent / "shared" / "data" / "coco_train2017_100"))

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def coco100_dir() -> Path:
    """Folder of the 100-image COCO subset (``annotations.json`` and ``images/``)."""
    if not (COCO100 / "annotations.json").is_file():
        pytest.fail(f"the test data is missing: expected {COCO100} (../shared beside the repo)")
    return COCO100


@pytest.fixture(scope="session")
def coco100(coco100_dir) -> dict:
    """The parsed ground-truth JSON of the subset (do not mutate: copy first)."""
    return json.loads((coco100_dir / "annotations.json").read_text())


def subset_coco(coco: dict, n_images: int, max_anns: int | None = None, skip_crowd: bool = True) -> dict:
    """The first ``n_images`` images that have non-crowd annotations, with their annotations."""
    by_img: dict[int, list] = {}
    for a in coco["annotations"]:
        if skip_crowd and a.get("iscrowd", 0):
            continue
        by_img.setdefault(a["image_id"], []).append(a)
    images = [im for im in coco["images"] if by_img.get(im["id"])][:n_images]
    anns = [a for im in images for a in by_img[im["id"]][:max_anns]]
    return {**{k: v for k, v in coco.items() if k not in ("images", "annotations")},
            "images": [dict(im) for im in images], "annotations": [dict(a) for a in anns]}


@pytest.fixture
def small_gt(coco100, tmp_path) -> Path:
    """A 3-image ground-truth COCO file (at most 4 instances per image) in ``tmp_path``."""
    sub = subset_coco(coco100, 3, max_anns=4)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(sub))
    return path


@pytest.fixture(scope="session")
def tiny_engine():
    """The ``sam_tiny`` engine with seeded random weights, fp32 on the CPU (shared)."""
    from pseudolabel.core.engines.loading import load_model
    from pseudolabel.core.engines.sam1 import SamEngine

    model, ckpt = load_model("sam_tiny", "none")
    return SamEngine(model, "sam_tiny", ckpt, "cpu", "fp32")


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test, restored afterwards: on a small shared CPU a
    second thread mostly waits for a core (3-6x slower under load)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_cli(argv: list[str], monkeypatch) -> int:
    """Run ``sap ARGV`` in this process through the console entry point; returns the exit code."""
    import cli

    monkeypatch.setattr(sys, "argv", ["sap", *argv])
    with pytest.raises(SystemExit) as e:
        cli.main()
        sys.exit(0)
    return int(e.value.code or 0)
