"""Shared fixtures.

The test data every test uses is committed: ``tests/data/coco_cc_by`` (six CC BY / Flickr
Commons COCO photos with their instance masks, see its ATTRIBUTION.md), so the suite runs on a
fresh clone. Tests that need the 100-image set ``../shared/data/coco_train2017_100`` (read in
place, never copied) take the ``coco100`` fixtures and are skipped, with the reason, where it is
absent.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COCO_CC_BY = REPO / "tests" / "data" / "coco_cc_by"
COCO100 = Path(os.environ.get("SAP_COCO100", REPO.parent / "shared" / "data" / "coco_train2017_100"))

os.environ.setdefault("TQDM_DISABLE", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "coco100: needs ../shared/data/coco_train2017_100 (skipped without it)")


def pytest_collection_modifyitems(config, items):
    """Mark every test that takes the 100-image set, so `-m coco100` selects exactly those."""
    for item in items:
        if {"coco100", "coco100_dir"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.coco100)


@pytest.fixture(scope="session")
def coco_dir() -> Path:
    """Folder of the committed CC BY COCO photos (``annotations.json`` and ``images/``)."""
    return COCO_CC_BY


@pytest.fixture(scope="session")
def coco_gt(coco_dir) -> dict:
    """The parsed ground truth of the committed photos (do not mutate: copy first)."""
    return json.loads((coco_dir / "annotations.json").read_text())


@pytest.fixture(scope="session")
def coco100_dir() -> Path:
    """Folder of the 100-image COCO subset; skips the test where ../shared is absent."""
    if not (COCO100 / "annotations.json").is_file():
        pytest.skip(f"needs the 100-image COCO set at {COCO100} (../shared beside the clone; "
                    "set SAP_COCO100 to point elsewhere)")
    return COCO100


@pytest.fixture(scope="session")
def coco100(coco100_dir) -> dict:
    """The parsed ground-truth JSON of the 100-image subset (do not mutate: copy first)."""
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
def small_gt(coco_gt, tmp_path) -> Path:
    """A 3-image ground-truth COCO file (at most 4 instances per image) in ``tmp_path``."""
    sub = subset_coco(coco_gt, 3, max_anns=4)
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
