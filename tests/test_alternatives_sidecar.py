"""The selector's alternatives in a sidecar: written beside the JSON, found again by the readers
that need them (train's MPS targets, review), carried through refine, never for locked masks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pseudolabel.core.alternatives import INFO_KEY, attach_alternatives, rebase, sidecar_of, write_line
from pseudolabel.core.coco import lock_annotation
from pseudolabel.core.errors import InputError

RLE_A = {"size": [4, 4], "counts": "04L"}
RLE_B = {"size": [4, 4], "counts": "1;"}


def _pseudo(folder: Path) -> Path:
    """A two-annotation pseudo-label file with its sidecar, as `sap select` writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pseudo.json"
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": RLE_A},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": RLE_B}]
    with open(sidecar_of(path), "w") as f:
        write_line(f, 1, [RLE_B])
        write_line(f, 2, [RLE_A, RLE_B])
    path.write_text(json.dumps({"info": {INFO_KEY: sidecar_of(path).name}, "images": [], "annotations": anns}))
    return path


def test_the_sidecar_is_attached_by_id_and_skips_locked_and_inline_annotations(tmp_path):
    path = _pseudo(tmp_path)
    coco = json.loads(path.read_text())
    coco["annotations"][1] = lock_annotation(coco["annotations"][1], "test")
    assert attach_alternatives(coco, path) == 1
    first, locked = coco["annotations"]
    assert first["alternatives"] == [RLE_B] and "alternatives" not in locked
    inline = {"info": {}, "annotations": [{"id": 1, "alternatives": [RLE_A]}]}
    assert attach_alternatives(inline, path) == 0 and inline["annotations"][0]["alternatives"] == [RLE_A]


def test_a_missing_sidecar_is_one_sentence_and_refine_rebases_the_reference(tmp_path):
    path = _pseudo(tmp_path / "select")
    info = rebase(json.loads(path.read_text())["info"], path, tmp_path / "refine" / "refined.json")
    assert info[INFO_KEY] == "../select/pseudo.alternatives.jsonl"
    sidecar_of(path).unlink()
    with pytest.raises(InputError, match=r"keeps its alternatives in .*pseudo.alternatives.jsonl, which does not"):
        attach_alternatives(json.loads(path.read_text()), path)


def test_train_reads_the_mps_targets_from_the_sidecar(small_gt, coco_dir, tmp_path):
    from segtrain.data import load_dataset

    coco = json.loads(small_gt.read_text())
    first, second = coco["annotations"][:2]
    path = tmp_path / "pseudo.json"
    with open(sidecar_of(path), "w") as f:
        write_line(f, first["id"], [second["segmentation"]])
    coco["info"] = {INFO_KEY: sidecar_of(path).name}
    path.write_text(json.dumps(coco))
    records, _, stats = load_dataset(path, coco_dir / "images")
    assert stats.with_alternatives == 1
    rec = next(r for r in records if r.image_id == first["image_id"])
    assert len(rec.alternatives_of(0)) == 1
    assert rec.alternatives == [] and rec.alt_store is not None  # held on disk, not in the record
