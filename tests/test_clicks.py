"""Every click of an object goes to SAM in one prompt; the cache records how many; select and
refine read such caches (and format-1 caches) unchanged."""

import json
import sqlite3

import numpy as np
import pytest

from conftest import subset_coco
from pseudolabel.core.bag_sources import load_bags
from pseudolabel.core.cache import CacheReader, cache_files, points_digest
from pseudolabel.core.engines.base import coords_to_input_frame
from pseudolabel.core.errors import InputError
from pseudolabel.core.points import PointAnn, collect_points, derive_points
from pseudolabel.proposals.prompt_kinds import click_prompt
from pseudolabel.proposals.run import ProposalConfig, image_proposals, run_proposals

@pytest.fixture(scope="module")
def pocket():
    """The pocket SAM (bundled weights): SAM's modules with a 256 frame, fast on a CPU."""
    from pseudolabel.core.engines.loading import create_engine

    return create_engine("sam_pocket", None, "cpu", "fp32")


MULTI = PointAnn(1, 1, 1, 10.0, 12.0, ((10.0, 12.0, 1), (20.0, 14.0, 1), (40.0, 30.0, 0)))
SINGLE = PointAnn(2, 1, 1, 50.5, 8.25)
MULTI2 = PointAnn(3, 1, 1, 30.0, 20.0, ((5.0, 5.0, 0), (30.0, 20.0, 1), (31.0, 22.0, 1)))


def test_click_prompt_pads_variable_counts_with_minus_one_and_picks_by_mode():
    p = click_prompt([MULTI, SINGLE], "all")
    assert p.coords.shape == (2, 3, 2) and p.labels.tolist() == [[1, 1, 0], [1, -1, -1]]
    assert p.coords[1, 0].tolist() == [50.5, 8.25] and p.counts.tolist() == [3, 1]
    assert p.first.tolist() == [[10.0, 12.0], [50.5, 8.25]]
    assert click_prompt([MULTI], "positive").labels.tolist() == [[1, 1]]
    assert click_prompt([MULTI2], "first").coords.tolist() == [[[30.0, 20.0]]]
    with pytest.raises(InputError, match="unknown click mode 'some'"):
        ProposalConfig(clicks="some")


def test_multi_click_objects_reach_the_decoder_as_one_prompt(pocket, monkeypatch):
    rgb = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    emb = pocket.encode(rgb)
    seen = []
    encoder = pocket.model.prompt_encoder
    original = encoder.forward

    def spy(points, boxes, masks):
        seen.append((points[0].clone(), points[1].clone(), None if boxes is None else boxes.clone()))
        return original(points, boxes, masks)

    monkeypatch.setattr(encoder, "forward", spy)
    rows = image_proposals(pocket, emb, [MULTI, SINGLE, MULTI2], ("point", "point_box"), 8, clicks="all")
    # the single click in one chunk, the two 3-click objects in another; each kind once per chunk
    assert [tuple(c.shape) for c, _, _ in seen] == [(1, 1, 2), (1, 1, 2), (2, 3, 2), (2, 3, 2)]
    assert [b is None for *_, b in seen] == [True, False, True, False]
    coords, labels, _ = seen[2]
    assert labels.tolist() == [[1, 1, 0], [0, 1, 1]]
    want = coords_to_input_frame(np.array([[c[:2] for c in MULTI.clicks], [c[:2] for c in MULTI2.clicks]]),
                                 (48, 64), emb.input_size)
    np.testing.assert_allclose(coords.numpy(), want, rtol=1e-6)
    clicks = {(r[0], r[3]): r[-1] for r in rows}
    assert clicks == {(1, "point"): 3, (1, "point_box"): 3, (2, "point"): 1, (2, "point_box"): 1,
                      (3, "point"): 3, (3, "point_box"): 3}
    # a point's masks do not depend on its neighbours' clicks
    alone = image_proposals(pocket, emb, [SINGLE], ("point", "point_box"), 8, clicks="all")
    positive = image_proposals(pocket, emb, [MULTI], ("point",), 8)  # the default drops negatives
    assert tuple(seen[-1][0].shape) == (1, 2, 2) and seen[-1][1].tolist() == [[1, 1]] and positive[0][-1] == 2
    assert [r[5] for r in alone] == [r[5] for r in rows if r[0] == 2]


def _multi_click_file(coco_gt, tmp_path):
    pts, _ = derive_points(subset_coco(coco_gt, 2, max_anns=2), "center")
    for i, a in enumerate(pts["annotations"]):
        if i % 2 == 0:  # every other object: its point, a second positive click beside it, a negative one
            x, y = a["point"]
            a["point_coords"] = [[x, y], [x + 1.0, y], [0.0, 0.0]]
            a["point_labels"] = [1, 1, 0]
    path = tmp_path / "points.json"
    path.write_text(json.dumps(pts))
    return path, pts


def test_cache_records_clicks_select_reads_it_and_format_1_still_reads(coco_gt, coco_dir, tmp_path, pocket):
    from pseudolabel.selector import SelectConfig, run_select

    points, pts = _multi_click_file(coco_gt, tmp_path)
    cache = tmp_path / "cache"
    run_proposals(points, coco_dir / "images", cache, ProposalConfig(prompts="point,point_box"), engine=pocket)
    with CacheReader(cache) as reader:
        assert reader.clicks() == {a["id"]: 2 if "point_coords" in a else 1 for a in pts["annotations"]}
        assert reader.config["clicks"] == "positive"  # the default: negatives left out
    bags = load_bags(cache, points_json=points)
    assert sum(len(b) for b in bags.values()) == len(pts["annotations"])
    out = run_select(points, cache, tmp_path / "pseudo.json", SelectConfig(method="sam-top1"))
    assert out.written == len(pts["annotations"])

    # a format-1 cache (no clicks column) reads as one click per proposal, with the same bags
    shard = cache_files(cache)[0]
    with sqlite3.connect(shard) as conn:
        conn.execute("ALTER TABLE proposals DROP COLUMN clicks")
        conn.execute("ALTER TABLE points DROP COLUMN clicks")
        conn.execute("UPDATE points SET x = x")  # format 1 knew only the first click
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'format_version'")
    with CacheReader(cache) as reader:
        assert set(reader.clicks().values()) == {1}
    with sqlite3.connect(shard) as conn:  # format 1's configuration had no click mode
        config = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
        config.pop("clicks")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'config'", (json.dumps(config),))
    again = load_bags(cache, points_json=points)  # the multi-click file made it: its first clicks match
    assert [b.rles for bs in again.values() for b in bs] == [b.rles for bs in bags.values() for b in bs]
    with pytest.raises(InputError, match="has cache format 1, this sap writes 2"):
        run_proposals(points, coco_dir / "images", cache, ProposalConfig(prompts="point,point_box"),
                      engine=pocket)


def test_points_keep_every_click_and_the_digest_of_single_clicks_is_unchanged():
    coco = {"images": [{"id": 1, "width": 10, "height": 10, "file_name": "a.png"}],
            "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                             "point_coords": [[9.0, 9.0], [2.0, 3.0], [10.0, 10.0]], "point_labels": [0, 1, 1]},
                            {"id": 2, "image_id": 1, "category_id": 1, "point": [4.0, 4.0]}]}
    (p, q), _ = collect_points(coco)[0][1], None
    assert (p.x, p.y) == (2.0, 3.0) and p.all_clicks() == ((9.0, 9.0, 0), (2.0, 3.0, 1), (10.0, 10.0, 1))
    assert q.clicks == () and q.all_clicks() == ((4.0, 4.0, 1),)
    import hashlib

    old = hashlib.sha256(b"2,1,1,4.0,4.0;").hexdigest()  # format 1's digest of the single click
    assert points_digest([q]) == old and points_digest([p, q]) != points_digest([PointAnn(1, 1, 1, 2.0, 3.0), q])
    coco["annotations"][0]["point"] = [9.5, 9.5]  # a given `point` stays the SAPNet point, as before
    assert (collect_points(coco)[0][1][0].x, collect_points(coco)[0][1][0].y) == (9.5, 9.5)
    coco["annotations"][0]["point"] = [10.5, 9.5]
    with pytest.raises(InputError, match=r"the point \(10.5, 9.5\) of annotation 1 lies outside"):
        collect_points(coco)
    del coco["annotations"][0]["point"]
    coco["annotations"][0]["point_labels"] = [0, 0, 0]
    with pytest.raises(InputError, match="annotation 1 has only negative clicks"):
        collect_points(coco)
