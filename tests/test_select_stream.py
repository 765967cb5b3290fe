"""`sap select` reads bags one image at a time from the cache, and refuses a silent random backbone."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import run_cli, subset_coco
from pseudolabel.core.bag_sources import CacheBagStore, MemoryBagStore, open_bag_store
from pseudolabel.core.cache import CacheReader
from pseudolabel.core.errors import InputError
from pseudolabel.core.points import derive_points
from pseudolabel.selector import SelectConfig, run_select
from pseudolabel.selector.data import BagDataset
from pseudolabel.selector.mil import choice_margin
from pseudolabel.testing.synthetic import synthetic_bags, write_bags_cache

FAST = SelectConfig(epochs=1, backbone="resnet18", backbone_weights="none", min_size=64, max_size=96,
                    batch_size=2, workers=0, npg_num=8)


DATA = Path(__file__).parent / "data" / "coco_cc_by"  # runs on a fresh clone


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    gt = subset_coco(json.loads((DATA / "annotations.json").read_text()), 3, max_anns=3)
    points, _ = derive_points(gt, "center", seed=0)
    ann = root / "points.json"
    ann.write_text(json.dumps(points))
    bags = synthetic_bags(gt, points, seed=0)
    cache = write_bags_cache(root / "cache", points, bags, DATA / "images")
    return SimpleNamespace(root=root, points=points, ann=ann, bags=bags, cache=cache, images=DATA / "images")


def _same_bags(a, b) -> None:
    assert [x.ann_id for x in a] == [y.ann_id for y in b]
    for x, y in zip(a, b):
        assert x.rles == y.rles and x.kinds == y.kinds
        assert np.allclose(x.boxes, y.boxes) and np.allclose(x.scores, y.scores)


def test_cache_store_reads_one_image_at_a_time_and_survives_pickling(data):
    store = open_bag_store(data.cache, data.points)
    assert isinstance(store, CacheBagStore)
    with CacheReader(data.cache) as reader:
        everything = reader.bags()
    assert store.image_ids() == sorted(everything)
    for image_id in store.image_ids():
        _same_bags(store.bags(image_id), everything[image_id])
    assert store.bags(-1) == []
    clone = pickle.loads(pickle.dumps(store))  # what a spawned data-loading worker gets
    assert clone._reader is None
    _same_bags(clone.bags(store.image_ids()[0]), everything[store.image_ids()[0]])
    store.close()
    _same_bags(store.bags(store.image_ids()[-1]), everything[store.image_ids()[-1]])  # reopens
    assert isinstance(open_bag_store(data.cache), CacheBagStore)


def test_mismatched_mask_sizes_in_a_cache_are_refused(data, tmp_path):
    points = json.loads(data.ann.read_text())
    points["images"][0]["height"] += 1
    with pytest.raises(InputError, match="mask size"):
        open_bag_store(data.cache, points)


def test_select_never_loads_every_bag_of_a_cache(data, monkeypatch, tmp_path):
    def refuse(self):
        raise AssertionError("CacheReader.bags() loads every bag at once")

    monkeypatch.setattr(CacheReader, "bags", refuse)
    for method in ("sam-top1", "mil"):
        out = tmp_path / f"{method}.json"
        run_select(data.ann, data.cache, out, replace(FAST, method=method, work_dir=str(tmp_path / method)),
                   images=data.images)
        anns = json.loads(out.read_text())["annotations"]
        assert sorted(a["id"] for a in anns) == sorted(a["id"] for a in data.points["annotations"])
    # the dataset holds only the image list; bags come from the store when an item is read
    ds = BagDataset(data.points["images"], open_bag_store(data.cache), data.images, {}, 96, 64)
    assert not hasattr(ds, "bags") and set(ds.images[0]) == {"id", "file_name", "width", "height"}


def test_streamed_output_equals_the_in_memory_path(data, tmp_path):
    from pseudolabel.core.sapnet_format import bags_to_sapnet

    sapnet_json = tmp_path / "sapnet.json"
    sapnet_json.write_text(json.dumps(bags_to_sapnet(data.points, data.bags)))
    assert isinstance(open_bag_store(sapnet_json, data.points), MemoryBagStore)
    cfg = replace(FAST, method="mil")
    run_select(data.ann, data.cache, tmp_path / "a.json", replace(cfg, work_dir=str(tmp_path / "wa")), images=data.images)
    run_select(data.ann, sapnet_json, tmp_path / "b.json", replace(cfg, work_dir=str(tmp_path / "wb")), images=data.images)
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a == b
    assert {k for k in a if k != "annotations"} == {k for k in data.points if k != "annotations"}


def test_margin_is_the_gap_to_the_best_box_leading_elsewhere():
    scores = np.array([0.5, 0.3, 0.15, 0.05])
    # boxes 0 and 1 lead to proposal 2, box 2 to proposal 0: the runner-up is box 2
    leads = [2, 2, 0, 1]
    assert choice_margin(scores, lambda j: leads[j], 0) == pytest.approx((0.5 - 0.15) / 1.0)
    assert choice_margin(scores, lambda j: j, 0) == pytest.approx(0.2)  # one stage: top-1 vs second
    assert choice_margin(scores, lambda j: 7, 0) == pytest.approx(0.5)   # every box agrees
    assert choice_margin(np.zeros(3), lambda j: j, 0) == 0.0
    calls = []
    choice_margin(scores, lambda j: calls.append(j) or j, 0)
    assert calls == [0, 1]  # lazily: stops at the first box leading elsewhere


def test_output_carries_margin_and_stages(data, tmp_path):
    out = tmp_path / "top1.json"
    run_select(data.ann, data.cache, out, replace(FAST, method="sam-top1"))
    bag_of = {b.ann_id: b for bs in data.bags.values() for b in bs}
    for a in json.loads(out.read_text())["annotations"]:
        s = np.sort(bag_of[a["id"]].scores)[::-1]
        assert a["sap"]["margin"] == pytest.approx(s[0] - s[1], abs=1e-6)
    out = tmp_path / "sapnet.json"
    run_select(data.ann, data.cache, out, replace(FAST, method="sapnet", work_dir=str(tmp_path / "w")),
               images=data.images)
    for a in json.loads(out.read_text())["annotations"]:
        assert 0.0 <= a["sap"]["margin"] <= 1.0
        assert set(a["sap"]["stages"]) == {"psm", "psm_bms", "prm"}
        assert all(0 <= v < 6 for v in a["sap"]["stages"].values())


def test_training_from_random_weights_needs_an_explicit_none(data, tmp_path, monkeypatch, capsys):
    import pseudolabel.core.resnet_fpn as resnet_fpn

    monkeypatch.setattr(resnet_fpn, "fetch_resnet_weights", lambda name, spec, what="": (None, "random"))
    with pytest.raises(InputError, match="--backbone-weights none"):
        run_select(data.ann, data.cache, tmp_path / "x.json", replace(FAST, method="mil", backbone_weights="imagenet"),
                   images=data.images)
    args = ["select", "--ann", str(data.ann), "--proposals", str(data.cache), "--images", str(data.images),
            "--out", str(tmp_path / "y.json"), "--method", "mil", "--backbone", "resnet18", "--epochs", "1",
            "--min-size", "64", "--max-size", "96", "--workers", "0"]
    assert run_cli(args, monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--backbone-weights none" in err[-1] and not (tmp_path / "y.json").exists()
    assert run_cli([*args, "--backbone-weights", "none"], monkeypatch) == 0
    assert (tmp_path / "y.json").is_file()
