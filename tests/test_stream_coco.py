"""COCO files read streamed (export, review): the same answers and bytes as reading them whole."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pseudolabel.core.coco import annotations_by_image, load_coco_json, lock_annotation
from pseudolabel.core.coco_stream import AnnotationIndex, open_coco_stream
from pseudolabel.core.errors import InputError
from pseudolabel.core.io import write_json_stream
from pseudolabel.core.rle import encode_mask
from pseudolabel.export.labelstudio import export_labelstudio
from pseudolabel.export.run import run_export
from pseudolabel.review import Context, build_queue, run_review
from pseudolabel.review.page import image_href
from pseudolabel.review.queue import write_worst

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "coco_cc_by"


def test_write_json_stream_writes_json_dumps_bytes_and_nothing_on_error(tmp_path):
    out = tmp_path / "a.json"
    for items, head in [([], None), ([1, {"a": 2.5, "b": "</x>"}], None), ([], {}), ([{"x": 1}], {"info": {"k": [1]}})]:
        write_json_stream(out, iter(items), head, None if head is None else "annotations")
        want = items if head is None else {**head, "annotations": items}
        assert out.read_text() == json.dumps(want)

    def broken():
        yield 1
        raise InputError("bad annotation")

    before = out.read_bytes()
    with pytest.raises(InputError):
        write_json_stream(out, broken())
    assert out.read_bytes() == before and list(tmp_path.iterdir()) == [out]  # untouched, no temp left


def _coco(shuffle: bool) -> dict:
    mask = encode_mask(__import__("numpy").eye(6, dtype="uint8"))
    anns = [{"id": i, "image_id": 1 + i % 3, "category_id": 1, "segmentation": mask} for i in range(1, 10)]
    if shuffle:
        random.Random(0).shuffle(anns)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 6, "height": 6} for i in (3, 1, 2, 4)]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}], "info": {"after": True}}


@pytest.mark.parametrize("shuffle", [False, True])
def test_stream_groups_by_image_in_images_order_whatever_the_annotation_order(tmp_path, shuffle):
    path = tmp_path / "c.json"
    coco = _coco(shuffle)
    path.write_text(json.dumps(coco))
    stream = open_coco_stream(path, check_masks="exact")
    assert list(stream.header) == ["images", "categories", "info"] and stream["info"] == {"after": True}
    assert len(stream) == 9 and list(stream.annotations()) == coco["annotations"]
    whole = annotations_by_image(load_coco_json(path))
    extra = {4: [{"id": 99, "image_id": 4}]}
    got = [(img["id"], [a["id"] for a in anns]) for img, anns in stream.by_image(extra)]
    assert got == [(i, [a["id"] for a in whole[i]] + ([99] if i == 4 else [])) for i in (3, 1, 2, 4)]
    with AnnotationIndex(stream) as index:
        assert index.get(5) == next(a for a in coco["annotations"] if a["id"] == 5) and index.get(77) is None


def test_stream_refuses_what_load_coco_json_refuses(tmp_path):
    path = tmp_path / "c.json"
    coco = _coco(False)
    coco["annotations"][4]["id"] = coco["annotations"][3]["id"]
    path.write_text(json.dumps(coco))
    with pytest.raises(InputError) as whole:
        load_coco_json(path)
    with pytest.raises(InputError) as streamed:
        open_coco_stream(path)
    assert str(streamed.value) == str(whole.value) == f"{path}: annotation id 4 appears twice"
    path.write_text('{"images": [}')
    with pytest.raises(InputError, match="is not valid JSON"):
        open_coco_stream(path)
    coco = _coco(False)
    coco["annotations"][0]["segmentation"] = {"size": [6, 6], "counts": "garbage!"}
    path.write_text(json.dumps(coco))
    with pytest.raises(InputError, match="annotation 1 of image 2"):
        open_coco_stream(path, check_masks="exact")


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory) -> Path:
    """The CC-BY photos' masks as pseudo-labels, annotations in random order, one locked."""
    coco = load_coco_json(DATA / "annotations.json")
    coco["annotations"][2] = lock_annotation(coco["annotations"][2], "labelstudio")
    random.Random(1).shuffle(coco["annotations"])
    path = tmp_path_factory.mktemp("shuffled") / "labels.json"
    path.write_text(json.dumps(coco))
    return path


def test_streamed_label_studio_export_equals_the_whole_file_one(shuffled, tmp_path):
    run_export("labelstudio", shuffled, DATA / "images", tmp_path / "streamed.json")
    export_labelstudio(load_coco_json(shuffled), tmp_path / "whole.json", DATA / "images")
    assert (tmp_path / "streamed.json").read_bytes() == (tmp_path / "whole.json").read_bytes()
    assert (tmp_path / "streamed.xml").read_bytes() == (tmp_path / "whole.xml").read_bytes()


def test_streamed_review_queue_equals_the_in_memory_queue(shuffled, tmp_path):
    out = tmp_path / "review"
    summary = run_review(out, ann=shuffled, images=DATA / "images", gt=DATA / "annotations.json",
                         selected=shuffled, thumbnails=False, n_worst=5)
    labels, gt = load_coco_json(shuffled), load_coco_json(DATA / "annotations.json")
    selected = {a["id"]: a for a in labels["annotations"]}
    items, _ = build_queue(labels, Context(selected=selected), gt)
    for it in items:
        it["image_href"] = image_href(it["file_name"], DATA / "images", out)
    queue = json.loads((out / "queue.json").read_text())
    assert queue["items"] == items and summary.done == 1 and summary.worst == 5
    assert [it["rank"] for it in queue["items"]] == list(range(1, len(items) + 1))
    write_worst(labels, items, tmp_path / "worst.json", 5)
    assert (out / "worst.json").read_bytes() == (tmp_path / "worst.json").read_bytes()
    assert summary.measure is not None or all(it.get("gt_iou", 1) >= 0.5 for it in items)
