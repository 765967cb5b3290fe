"""The hostile cases of issue 27 for tests/test_hostile_input.py: an input overwritten or read
outside its folder, ids that are no integers, deep nesting, numbers no one means, a full disk.

Data faults (:data:`FAULTS`) spoil the annotation file a stage reads, as the matrix's own do; the
other cases (:func:`apply`) change the command line of a valid case. A spec may say ``"rc_expected"`` (the
exit status expected, 2 unless given), ``"full_disk"`` (a folder the helper makes "full", see
tests/hostile_driver.py), ``"same_files"`` ({path: sha256} that must not change), ``"absent"``
(paths that must not appear) and ``"leftovers_ok"`` (a full disk may leave what it created).
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

BAD_ANN, BAD_IMG = 72, 86  # as in tests/test_hostile_input.py
NEST = "@@deep-nesting@@"  # replaced by 10,000 nested lists in the written file
DEPTH = 10_000


def _ann(coco: dict) -> dict:
    return next(a for a in coco["annotations"] if a["id"] == BAD_ANN)


def _img(coco: dict) -> dict:
    return next(im for im in coco["images"] if im["id"] == BAD_IMG)


FAULTS = {  # name: (spoil the parsed file in place, what the error line must name)
    "id_fraction": (lambda c: _ann(c).update(id=BAD_ANN + 0.5), f"{BAD_ANN + 0.5}"),
    "id_true": (lambda c: _ann(c).update(id=True), "id true"),
    "id_text": (lambda c: _ann(c).update(id="abc"), '"abc"'),
    "image_id_text": (lambda c: _ann(c).update(image_id=str(BAD_IMG)), f'"{BAD_IMG}"'),
    "category_object": (lambda c: _ann(c).update(category_id={"id": 1}), f"annotation {BAD_ANN}'s category"),
    "iscrowd_text": (lambda c: _ann(c).update(iscrowd="yes"), f"annotation {BAD_ANN}"),
    "point_nan": (lambda c: _ann(c).update(point=[float("nan"), 5.0]), "not a finite number"),
    "file_name_up": (lambda c: _img(c).update(file_name="../../../x.jpg"), f"image {BAD_IMG}"),
    "file_name_absolute": (lambda c: _img(c).update(file_name="/tmp/sap-hostile-x.jpg"), f"image {BAD_IMG}"),
    "deep_nesting": (lambda c: c.update(unused=NEST), "too deeply"),
}

DATA_CASES = {
    "proposals": ["id_fraction", "id_true", "image_id_text", "category_object", "point_nan", "file_name_absolute",
                  "deep_nesting"],
    "select": ["id_text", "point_nan", "deep_nesting"],
    "refine": ["category_object", "iscrowd_text", "file_name_up", "deep_nesting"],
    "train": ["id_fraction", "iscrowd_text"],
    "eval": ["category_object", "deep_nesting"],
    "viz": ["file_name_up", "deep_nesting"],
}
OTHER_CASES = {
    "proposals": ["out_holds_ann", "encoder_batch_negative", "disk_full", "image_is_folder"],
    "select": ["out_in_cache", "seed_negative", "sizes_swapped", "out_trailing_slash", "disk_full",
               "points_without_proposals"],
    "refine": ["out_is_image", "strength_nan", "iters_absurd", "disk_full"],
    "train": ["out_under_images", "seed_negative", "seed_huge", "disk_full"],
    "eval": ["out_trailing_slash", "disk_full"],
    "viz": ["disk_full"],
    "export": ["yolo_escape"],
}


def write_spoiled(data: dict, path: Path) -> None:
    """``json.dumps(data)`` to ``path``, with :data:`NEST` made 10,000 nested lists."""
    import json

    path.write_text(json.dumps(data).replace(f'"{NEST}"', "[" * DEPTH + "]" * DEPTH))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _images_copy(world: dict, d: Path) -> Path:
    """A private copy of the two images the cases use (a failed case must not spoil tests/data)."""
    dst = d / "images"
    dst.mkdir()
    for im in world["gt"]["images"]:
        shutil.copy(world["images"] / im["file_name"], dst / im["file_name"])
    return dst


def _set(argv: list[str], flag: str, value: str) -> None:
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]


def apply(spec: dict, world: dict, stage: str, case: str, d: Path) -> dict:
    """Change the valid case ``spec`` (argv, target, expect, before) of ``stage`` into ``case``."""
    argv, w = spec["argv"], world["dir"]
    out = Path(spec["target"])
    if case == "out_holds_ann":  # the cache folder would hold the point file it reads
        out.mkdir()
        shutil.copy(w / "points.json", out / "points.json")
        _set(argv, "--ann", str(out / "points.json"))
        spec.update(expect=["input"], before=["points.json"])
    elif case == "out_in_cache":  # --out is the cache's own SQLite file
        cache = d / "cache"
        shutil.copytree(w / "cache", cache)
        shard = next(cache.glob("shard-*.sqlite"))
        _set(argv, "--proposals", str(cache))
        _set(argv, "--out", str(shard))
        spec.update(expect=["input"], target=str(cache), before=sorted(p.name for p in cache.iterdir()),
                    same_files={str(p): sha256(p) for p in cache.iterdir()})
    elif case in ("out_is_image", "out_under_images"):  # --out is an image, or a folder among them
        images = _images_copy(world, d)
        out = images / (world["gt"]["images"][0]["file_name"] if case == "out_is_image" else "run")
        _set(argv, "--images", str(images))
        _set(argv, "--out", str(out))
        spec.update(expect=["input"], target=str(images), before=sorted(p.name for p in images.iterdir()),
                    same_files={str(p): sha256(p) for p in images.iterdir()})
    elif case == "encoder_batch_negative":
        argv += ["--encoder-batch", "-5"]
        spec["expect"] = ["--encoder-batch"]
    elif case in ("seed_negative", "seed_huge"):
        argv += ["--seed", "-1" if case == "seed_negative" else "99999999999999999999"]
        spec["expect"] = ["--seed"]
    elif case == "sizes_swapped":
        argv += ["--method", "mil", "--images", str(world["images"]), "--min-size", "160", "--max-size", "1"]
        spec["expect"] = ["--max-size", "--min-size"]
    elif case == "out_trailing_slash":  # a file output spelled as a folder
        _set(argv, "--out", str(d / "outdir") + "/")
        spec.update(expect=["outdir", "folder"], target=str(d / "outdir"), before=None)
    elif case == "strength_nan":
        argv += ["--strength", "nan"]
        spec["expect"] = ["--strength"]
    elif case == "iters_absurd":
        _set(argv, "--iters", "100000")
        spec["expect"] = ["--iters", "50"]
    elif case == "disk_full":  # the file is named, the advice is to free space, never --overwrite
        spec.update(full_disk=str(d), expect=[str(d), "space"], leftovers_ok=True, forbid=["--overwrite"])
    elif case == "image_is_folder":  # an image path that is a folder fails that image, in words
        images = _images_copy(world, d)
        bad = next(im["file_name"] for im in world["gt"]["images"] if im["id"] == BAD_IMG)
        (images / bad).unlink()
        (images / bad).mkdir()
        _set(argv, "--images", str(images))
        spec.update(rc_expected=1, expect=["is a folder"], leftovers_ok=True)
    elif case == "points_without_proposals":  # their image failed in sap proposals: exit 1
        _set(argv, "--proposals", str(w / "cache_failed"))
        spec.update(rc_expected=1, expect=[], leftovers_ok=True)
    elif case == "yolo_escape":  # a crafted file_name must not make a label file outside --out
        gt = copy.deepcopy(world["gt"])
        FAULTS["file_name_up"][0](gt)
        write_spoiled(gt, d / "gt.json")
        argv[argv.index("coco-polygons")] = "yolo-seg"
        _set(argv, "--ann", str(d / "gt.json"))
        _set(argv, "--out", str(d / "yolo"))
        spec.update(target=str(d / "yolo"), before=None, expect=["gt.json", f"image {BAD_IMG}"],
                    absent=[str(d.parent / "x.txt")])
    return spec
