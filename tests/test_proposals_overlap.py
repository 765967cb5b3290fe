"""`sap proposals` with reading and RLE encoding overlapped: the same cache as without; the parts."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pseudolabel.core.cache import dump_cache
from pseudolabel.core.errors import ImageError
from pseudolabel.core.points import derive_points
from pseudolabel.core.rle import decode_rles, encode_masks
from pseudolabel.proposals.overlap import Prefetch, RleWorker
from pseudolabel.proposals.run import ProposalConfig, run_proposals

CC_BY = Path(__file__).resolve().parent / "data" / "coco_cc_by"


@pytest.fixture(scope="module")
def points_file(tmp_path_factory) -> Path:
    """Centre points of the CC-BY photos (≤ 3 objects each) plus one image whose file is missing."""
    gt = json.loads((CC_BY / "annotations.json").read_text())
    images = sorted(gt["images"], key=lambda im: im["id"])[:4]
    keep = {im["id"] for im in images}
    anns, per = [], {}
    for a in gt["annotations"]:
        if a["image_id"] in keep and not a.get("iscrowd") and per.get(a["image_id"], 0) < 3:
            per[a["image_id"]] = per.get(a["image_id"], 0) + 1
            anns.append(a)
    missing = {**images[0], "id": 999, "file_name": "not_there.jpg"}
    pts, _ = derive_points({**gt, "images": images + [missing], "annotations": anns}, "center")
    pts["annotations"].append({**pts["annotations"][0], "id": 99999, "image_id": 999})
    path = tmp_path_factory.mktemp("overlap") / "points.json"
    path.write_text(json.dumps(pts))
    return path


def _run(points_file, out, tiny_engine, **kw):
    cfg = ProposalConfig(prompts="point,point_box", save_embeddings=True, **kw)
    return run_proposals(points_file, CC_BY / "images", out, cfg, engine=tiny_engine)


def test_overlapped_run_writes_exactly_the_cache_of_a_sequential_run(points_file, tmp_path, tiny_engine,
                                                                     one_torch_thread):
    seq = _run(points_file, tmp_path / "seq", tiny_engine, overlap=False)
    ovl = _run(points_file, tmp_path / "ovl", tiny_engine, overlap=True)
    assert seq.done == ovl.done == 4 and seq.proposals == ovl.proposals == 6 * seq.points > 0
    assert [f[0] for f in seq.failed] == [f[0] for f in ovl.failed] == [999]
    a, b = dump_cache(tmp_path / "seq"), dump_cache(tmp_path / "ovl")
    assert len(a["proposals"]) == seq.proposals and len(a["embeddings"]) == 4
    assert a == b
    # a rerun finds everything done (the failed image is retried and fails again)
    again = _run(points_file, tmp_path / "ovl", tiny_engine)
    assert again.skipped == 4 and again.done == 0 and dump_cache(tmp_path / "ovl") == b


def test_two_images_per_encoder_call_give_the_same_proposals(points_file, tmp_path, tiny_engine, one_torch_thread):
    one = _run(points_file, tmp_path / "b1", tiny_engine, encoder_batch=1)
    two = _run(points_file, tmp_path / "b2", tiny_engine, encoder_batch=2)
    assert one.proposals == two.proposals
    a, b = dump_cache(tmp_path / "b1")["proposals"], dump_cache(tmp_path / "b2")["proposals"]
    assert [r[:5] for r in a] == [r[:5] for r in b]  # ann, image, kind, prompt, rank
    same = sum(x[5] == y[5] for x, y in zip(a, b))
    assert same >= 0.9 * len(a)  # RLEs: batched GEMMs round differently, a few pixels may flip


def test_prefetch_keeps_order_reports_image_errors_and_reads_ahead():
    started = []

    def load(i):
        started.append(i)
        if i == 3:
            raise ImageError("broken")
        time.sleep(0.01)
        return i * 10

    with Prefetch(range(6), load, depth=3) as pf:
        got = []
        for item, value, err in pf:
            got.append((item, value, None if err is None else str(err)))
            if item == 0:
                time.sleep(0.1)
                assert len(started) >= 3  # the next ones were read meanwhile
    assert got == [(0, 0, None), (1, 10, None), (2, 20, None), (3, None, "broken"), (4, 40, None), (5, 50, None)]
    inline = list(Prefetch(range(3), lambda i: threading.current_thread().name, depth=0))
    assert all(v == threading.current_thread().name for _, v, _ in inline)
    with pytest.raises(ZeroDivisionError):  # anything but an ImageError is a bug: it propagates
        list(Prefetch([0], lambda i: 1 / i, depth=2))


def test_rle_worker_returns_each_stack_in_order_within_its_pixel_budget():
    rng = np.random.default_rng(0)
    stacks = [rng.random((3, 20, 30)) > 0.5 for _ in range(5)]
    with RleWorker(enabled=True, budget=2 * 3 * 20 * 30) as rle:
        futures = [rle.submit(s) for s in stacks]
        assert rle.pixels <= 2 * 3 * 20 * 30
        for s, f in zip(stacks, futures):
            np.testing.assert_array_equal(decode_rles(f.result()), s)
    with RleWorker(enabled=False) as rle:
        assert rle.submit(stacks[0]).result() == encode_masks(stacks[0])


def test_column_major_masks_encode_without_a_copy_to_the_same_rle():
    rng = np.random.default_rng(1)
    masks_t = torch.from_numpy(rng.random((4, 30, 20)) > 0.5)  # N×W×H in memory
    masks = masks_t.transpose(-1, -2).numpy()                    # N×H×W view, column-major
    assert not masks.flags.c_contiguous
    assert encode_masks(masks) == encode_masks(np.ascontiguousarray(masks))


def test_upsampling_transposed_logits_is_the_transpose(tiny_engine):
    import dataclasses

    img = np.random.default_rng(2).integers(0, 255, (75, 130, 3), dtype=np.uint8)
    emb = tiny_engine.encode(img)
    low = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    emb_t = dataclasses.replace(emb, input_size=emb.input_size[::-1], original_size=emb.original_size[::-1])
    direct = tiny_engine.upscale(low, emb, threshold=None)
    transposed = tiny_engine.upscale(low.transpose(-1, -2), emb_t, threshold=None)
    assert transposed.shape == (2, 3, 130, 75)
    torch.testing.assert_close(transposed.transpose(-1, -2), direct, rtol=0, atol=1e-5)
