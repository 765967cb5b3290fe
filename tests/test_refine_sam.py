"""`sap refine` end to end with the tiny SAM (random weights) on images of the COCO subset."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import subset_coco
from pseudolabel.core.errors import InputError
from pseudolabel.core.images import load_image_rgb
from pseudolabel.core.rle import decode_rle, encode_mask, segmentation_to_rle
from pseudolabel.core.engines.loading import create_engine
from pseudolabel.core.engines.sam1 import SamEngine
from refine.adapt import AdaptConfig, adapt_coco
from refine.lora import LoRALinear, apply_adapter, remove_adapter
from refine.instances import partial_path, run_refine
from refine.refiner import RefineConfig
from refine.semantic import SemanticConfig, refine_semantic

CFG = RefineConfig(engine="sam_tiny", checkpoint="none", precision="fp32", iters=2)


@pytest.fixture(scope="module")
def engine():
    # One thread: on a shared 2-core machine, two threads contending make SAM 3× slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield create_engine("sam_tiny", "none", "cpu", "fp32")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def coarse(coco_gt) -> dict:
    """Two images, 3 objects each, with every kind of segmentation and of bad input."""
    sub = subset_coco(coco_gt, 2, max_anns=3)
    anns = sub["annotations"]
    img = {i["id"]: i for i in sub["images"]}
    a0 = anns[0]
    h, w = img[a0["image_id"]]["height"], img[a0["image_id"]]["width"]
    m = decode_rle(segmentation_to_rle(a0["segmentation"], h, w))
    ys, xs = np.nonzero(m)
    x1, y1, x2, y2 = xs.min(), ys.min(), xs.max(), ys.max()
    a0["segmentation"] = [[float(v) for v in (x1, y1, x2, y1, x2, y2, x1, y2)]]  # polygon input
    anns[1]["extra_field"] = {"kept": True}
    last = anns[-1]
    extra = [
        {**copy.deepcopy(last), "id": 9_000_001, "segmentation": []},  # no mask: passes through
        {**copy.deepcopy(last), "id": 9_000_002,
         "segmentation": {"size": [h + 1, w], "counts": encode_mask(np.ones((h + 1, w), np.uint8))["counts"]}},
        {**copy.deepcopy(last), "id": 9_000_003, "segmentation": [[1.0, 1.0, 5.0, 5.0]]},  # 2 points
        {**copy.deepcopy(last), "id": 9_000_004, "segmentation": encode_mask(np.zeros((h, w), np.uint8)),
         "image_id": a0["image_id"]},
    ]
    sub["annotations"] = anns + extra
    return sub


@pytest.fixture(scope="module")
def refined(coarse, coco_dir, engine, tmp_path_factory):
    d = tmp_path_factory.mktemp("refine")
    (d / "coarse.json").write_text(json.dumps(coarse))
    summary = run_refine(d / "coarse.json", coco_dir / "images", d / "refined.json", CFG, engine=engine)
    return d, summary, json.loads((d / "refined.json").read_text())


def test_ids_fields_and_counts_are_preserved(refined, coarse):
    d, summary, out = refined
    assert [a["id"] for a in out["annotations"]] == [a["id"] for a in coarse["annotations"]]
    by_id = {a["id"]: a for a in out["annotations"]}
    for a in coarse["annotations"]:
        b = by_id[a["id"]]
        assert b["category_id"] == a["category_id"] and b["image_id"] == a["image_id"]
        if a["id"] >= 9_000_000:
            assert b == a  # passed through unchanged
    assert summary.refined == sum(a["id"] < 9_000_000 for a in coarse["annotations"]) == 5
    assert summary.without_mask == 1
    assert {k: len(v) for k, v in summary.bad.items()} == {"size": 1, "polygon": 1, "empty": 1}
    b1 = by_id[coarse["annotations"][1]["id"]]
    assert b1["extra_field"] == {"kept": True}
    assert set(b1["segmentation"]) == {"size", "counts"} and 0 <= b1["refine_iou"] <= 1.5
    rle = b1["segmentation"]
    assert b1["area"] == float(decode_rle(rle).sum())
    assert out["info"]["sap_refine"]["settings"]["iters"] == 2
    assert out["info"]["sap_refine"]["summary"]["skipped_bad_masks"]["size"] == 1
    assert (d / "refined.config.yaml").is_file() and not partial_path(d / "refined.json").exists()


def test_output_loads_in_pycocotools(refined):
    from pycocotools.coco import COCO

    d, _, out = refined
    gt = COCO(str(d / "refined.json"))
    good = [a for a in out["annotations"] if "refine_iou" in a]
    assert len(gt.getAnnIds()) == len(out["annotations"]) and len(good) == 5
    for a in good:
        m = gt.annToMask(gt.loadAnns(a["id"])[0])
        assert m.sum() == a["area"] > 0
    dt = gt.loadRes([{**a, "score": a["refine_iou"]} for a in good])
    assert len(dt.getAnnIds()) == len(good)


def test_resume_skips_journaled_images_and_gives_the_same_file(refined, coco_dir, engine, tmp_path):
    """Resume survives a torn last line, and never mixes: an image whose file changed since it
    was journaled is refined again (and reported), other SAM weights start over."""
    d, _, out = refined
    src = d / "coarse.json"
    target = tmp_path / "again.json"
    part = partial_path(target)
    from refine.instances import _settings_digest
    from pseudolabel.core.images import file_sha256

    first = out["images"][0]
    done = [a for a in out["annotations"] if a["image_id"] == first["id"] and "refine_iou" in a]
    fake = [{**a, "area": -1.0} for a in done]  # what a run with other weights or pixels left

    def journal(sam: dict, sha: str, anns: list) -> None:
        part.write_text(json.dumps({"digest": _settings_digest(file_sha256(src), CFG, sam)}) + "\n"
                        + json.dumps({"image_id": first["id"], "sha256": sha, "annotations": anns, "kept": 0})
                        + "\n" + '{"image_id": 12, "annot')  # a line cut by a crash

    sha = file_sha256(coco_dir / "images" / first["file_name"])
    journal(engine.info(), sha, done)
    summary = run_refine(src, coco_dir / "images", target, CFG, engine=engine)
    assert summary.resumed_images == 1 and summary.refined_images == 1 and not summary.changed
    assert json.loads(target.read_text())["annotations"] == out["annotations"]
    assert not part.exists()

    journal(engine.info(), "0" * 64, fake)  # the image file changed since it was journaled
    summary = run_refine(src, coco_dir / "images", target, CFG, engine=engine)
    assert summary.changed == [first["id"]] and summary.resumed_images == 0 and summary.refined_images == 2
    assert any("changed" in line for line in summary.lines())
    assert json.loads(target.read_text())["annotations"] == out["annotations"]

    journal({**engine.info(), "checkpoint_sha256": "f" * 64}, sha, fake)  # other SAM weights
    summary = run_refine(src, coco_dir / "images", target, CFG, engine=engine)
    assert summary.resumed_images == 0 and summary.refined_images == 2
    assert json.loads(target.read_text())["annotations"] == out["annotations"]


def test_cached_embedding_gives_the_results_of_re_encoding(coarse, coco_dir, engine, tmp_path):
    from pseudolabel.core.cache import CacheReader
    from pseudolabel.proposals.run import ProposalConfig, run_proposals

    one = {**coarse, "images": coarse["images"][:1]}
    one["annotations"] = [a for a in coarse["annotations"] if a["image_id"] == one["images"][0]["id"]
                          and a["id"] < 9_000_000]
    pts = copy.deepcopy(one)
    for a in pts["annotations"]:
        x, y, w, h = a["bbox"]
        a["point"] = [x + w / 2, y + h / 2]
    (tmp_path / "points.json").write_text(json.dumps(pts))
    (tmp_path / "coarse.json").write_text(json.dumps(one))
    run_proposals(tmp_path / "points.json", coco_dir / "images", tmp_path / "cache",
                  ProposalConfig(engine="sam_tiny", checkpoint="none", precision="fp32", save_embeddings=True),
                  engine=engine)
    images = coco_dir / "images"
    assert CFG.rules.fp16_embeddings is False  # the official code keeps fresh embeddings fp32
    cfg16 = dataclasses.replace(CFG, fp16_embeddings=True)
    cached = run_refine(tmp_path / "coarse.json", images, tmp_path / "a.json",
                         dataclasses.replace(cfg16, embeddings=str(tmp_path / "cache")), engine=engine)
    encoded = run_refine(tmp_path / "coarse.json", images, tmp_path / "b.json", cfg16, engine=engine)
    assert (cached.from_cache, cached.encoded) == (1, 0) and (encoded.from_cache, encoded.encoded) == (0, 1)
    a = json.loads((tmp_path / "a.json").read_text())["annotations"]
    b = json.loads((tmp_path / "b.json").read_text())["annotations"]
    assert [x["id"] for x in a] == [x["id"] for x in b]

    # The cache stores the encoder's output in fp16, and with fp16_embeddings fresh encodings go
    # through fp16 too:
    # the stored embedding is exactly the rounded encoder output, and both runs agree bit for bit.
    img = one["images"][0]
    emb = engine.encode(load_image_rgb(images / img["file_name"]))
    with CacheReader(tmp_path / "cache") as reader:
        stored = torch.from_numpy(reader.embedding(img["id"])[0]["image_embed"])
    assert torch.equal(stored, emb.features.half().float())
    assert a == b


def test_semantic_label_maps(coarse, coco_dir, engine, tmp_path):
    img = coarse["images"][0]
    h, w = img["height"], img["width"]
    labels = np.zeros((h, w), dtype=np.uint8)
    for k, a in enumerate(x for x in coarse["annotations"] if x["image_id"] == img["id"] and x["id"] < 9_000_000):
        labels[decode_rle(segmentation_to_rle(a["segmentation"], h, w)) > 0] = 1 + k % 2
    labels[:3, :3] = 255  # ignore
    stem = img["file_name"].rsplit(".", 1)[0]
    src = tmp_path / "labels"
    src.mkdir()
    pal = Image.fromarray(labels, mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [128] * (256 * 3 - 9))
    pal.save(src / f"{stem}.png")
    Image.fromarray(np.full((h, w), 7, np.uint8), mode="L").save(src / "unknown.png")  # label 7 > 2
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(src / "colour.png")
    out = tmp_path / "out"
    summary = refine_semantic(src, coco_dir / "images", out, CFG, SemanticConfig(num_classes=3), engine=engine)
    assert summary.refined == 1 and summary.regions >= 2
    assert {name for name, _ in summary.failed} == {"unknown.png", "colour.png"}
    assert any("outside 0..2" in r for _, r in summary.failed)
    res = Image.open(out / f"{stem}.png")
    assert res.mode == "P" and res.getpalette()[:9] == [0, 0, 0, 255, 0, 0, 0, 255, 0]
    got = np.asarray(res)
    assert got.shape == (h, w) and set(np.unique(got)) <= {0, 1, 2, 255}
    assert not (out / "unknown.png").exists() and not (out / "colour.png").exists()
    again = refine_semantic(src, coco_dir / "images", out, CFG, SemanticConfig(num_classes=3), engine=engine)
    assert again.skipped_existing == 1 and again.refined == 0


def test_adapter_trains_saves_and_applies(refined, coco_dir, engine, tmp_path):
    d, _, _ = refined
    path = tmp_path / "adapter.pt"
    summary = adapt_coco(d / "coarse.json", coco_dir / "images", path, CFG,
                         AdaptConfig(batch_size=2, lr=0.5), engine=engine)
    assert summary.objects == 5 and summary.history["steps"] >= 1
    state = torch.load(path, weights_only=True)
    assert state["rank"] == 4 and state["lora_a"].shape == (4, 256) and state["lora_b"].abs().sum() > 0
    try:
        lora = apply_adapter(engine, path)
        assert isinstance(engine.model.mask_decoder.iou_prediction_head.layers[-1], LoRALinear)
        h = torch.randn(3, 256)
        assert not torch.allclose(lora(h), lora.base(h))
        other = SamEngine(engine.model, "sam_tiny", "another-checkpoint")
        with pytest.raises(InputError, match="trained for sam_tiny"):
            apply_adapter(other, path)
    finally:
        remove_adapter(engine)
    assert isinstance(engine.model.mask_decoder.iou_prediction_head.layers[-1], torch.nn.Linear)


def test_bad_input_stops_with_one_sentence(coco_dir, engine, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        run_refine(tmp_path / "missing.json", coco_dir / "images", tmp_path / "o.json", CFG, engine=engine)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(InputError, match="an input is never overwritten"):
        run_refine(tmp_path / "x.json", coco_dir / "images", tmp_path / "x.json", CFG, engine=engine)
    with pytest.raises(InputError, match="iters"):
        RefineConfig(iters=0)


def test_an_image_entry_that_fits_none_of_its_masks_fails_that_image(coarse, coco_dir, engine, tmp_path):
    """A wrong width in the image entry is the image's fault, named as such (exit 1), not one
    odd mask passed through with exit 0."""
    sub = copy.deepcopy(coarse)
    img = sub["images"][0]
    img["width"] += 1
    usable = [a for a in sub["annotations"] if a["image_id"] == img["id"] and isinstance(a["segmentation"], dict)]
    sub["annotations"] = usable
    sub["images"] = [img]
    (tmp_path / "c.json").write_text(json.dumps(sub))
    summary = run_refine(tmp_path / "c.json", coco_dir / "images", tmp_path / "o.json", CFG, engine=engine)
    assert [i for i, _ in summary.failed] == [img["id"]] and summary.refined == 0
    assert "image entry" in summary.failed[0][1] and str(img["width"]) in summary.failed[0][1]
