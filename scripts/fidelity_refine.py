"""Measure what each SAMRefiner rule changes: `--reference official` against `--reference paper`.

    python scripts/fidelity_refine.py [--data ../shared/data/coco_train2017_100] [--json OUT]

Prompt level, no SAM: on the 83 golden masks (tests/data/golden, made by the official code) and,
when ``--data`` exists, on `sap corrupt` (seed 0) masks of its images, the share of masks whose
positive point, negative point, box, CEBox box (synthetic embeddings of the golden set, margin
0.1) and mask prompt differ between the two rules, each rule switched alone; the share of
positive points that land inside the true object for each distance; and the STM partitions that
differ. The figures go into docs/fidelity.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from pseudolabel.core.rle import decode_rle, segmentation_to_rle  # noqa: E402
from pseudolabel.core.engines.base import resized_hw  # noqa: E402
from refine.distance import distance_maps  # noqa: E402
from refine.mask_prompt import mask_prompt  # noqa: E402
from refine.prompts import negative_point, positive_point  # noqa: E402
from refine.refiner import PromptState, RefineConfig, build_box, make_sampler  # noqa: E402
from refine.stm import official_split_then_merge, split_then_merge  # noqa: E402


def golden_canvases():
    from test_refine_golden import decode, synthetic_embedding

    doc = json.loads((REPO / "tests/data/golden/samrefiner_prompts.json").read_text())
    for c in doc["canvases"]:
        masks = np.stack([decode(m["rle"]) for m in c["masks"]])
        emb = SimpleNamespace(features=synthetic_embedding(c["embedding_seed"]),
                              original_size=(c["height"], c["width"]), input_size=tuple(c["input_size"]))
        yield masks, emb
    yield doc


def corrupted(data: Path, limit: int):
    """``(coarse, true)`` mask pairs of `sap corrupt` (seed 0) on the first ``limit`` images."""
    from pseudolabel.testing.corrupt import CorruptConfig, corrupt_coco

    with tempfile.TemporaryDirectory() as tmp:
        corrupt_coco(data / "annotations.json", Path(tmp) / "c.json", CorruptConfig(seed=0))
        coarse = json.loads((Path(tmp) / "c.json").read_text())
    gt = {a["id"]: a for a in json.loads((data / "annotations.json").read_text())["annotations"]}
    sizes = {im["id"]: (im["height"], im["width"]) for im in coarse["images"][:limit]}
    for a in coarse["annotations"]:
        if a["image_id"] not in sizes or a.get("iscrowd", 0):
            continue
        h, w = sizes[a["image_id"]]
        c = decode_rle(segmentation_to_rle(a["segmentation"], h, w)).astype(bool)
        if c.any():
            yield c, decode_rle(segmentation_to_rle(gt[a["id"]]["segmentation"], h, w)).astype(bool)


def point_rules(masks: list[np.ndarray], truth: list[np.ndarray] | None = None) -> dict:
    ch, eu = distance_maps(masks, "chamfer"), distance_maps(masks, "euclidean")
    n = len(masks)
    out = {"masks": n,
           "pos_differs": sum(positive_point(a) != positive_point(b) for a, b in zip(ch, eu)) / n,
           "neg_differs_distance": sum(negative_point(a) != negative_point(b) for a, b in zip(ch, eu)) / n,
           "neg_differs_region": sum(negative_point(a, "box_half_open") != negative_point(a, "box")
                                     for a in ch) / n,
           "neg_fallback_needed": sum(negative_point(a, "box_half_open", "omit") is None for a in ch) / n}
    if truth is not None:
        for name, maps in (("chamfer", ch), ("euclidean", eu)):
            out[f"pos_inside_truth_{name}"] = float(np.mean(
                [t[positive_point(mp)[1], positive_point(mp)[0]] for mp, t in zip(maps, truth)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "coco_train2017_100")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    t0 = time.perf_counter()
    report: dict = {}
    gen = golden_canvases()
    masks_all, prompt_diff, cebox_diff, n_cebox = [], [], 0, 0
    official = RefineConfig(engine="sam_tiny", cebox_margin=0.1)
    ours = RefineConfig(engine="sam_tiny", cebox_margin=0.1, cebox_rule="sap")
    for item in gen:
        if isinstance(item, dict):
            doc = item
            break
        masks, emb = item
        masks_all += list(masks)
        maps = distance_maps(list(masks), "chamfer")
        a = mask_prompt(masks, maps, emb.input_size, 30.0, 4.0, "gaussian")
        b = mask_prompt(masks, maps, emb.input_size, 30.0, 4.0, "constant")
        prompt_diff += list(np.abs(a - b).reshape(len(masks), -1).max(axis=1))
        boxes = []
        for cfg in (official, ours):
            state = PromptState(masks, cfg, make_sampler(cfg, emb))
            build_box(state)
            boxes.append(state.cebox)
        cebox_diff += int((np.abs(boxes[0] - boxes[1]).max(axis=1) > 0).sum())
        n_cebox += len(masks)
    report["golden"] = point_rules(masks_all)
    report["golden"]["cebox_rule_differs"] = cebox_diff / n_cebox
    report["golden"]["mask_outside_max_abs_diff"] = float(np.median(prompt_diff))
    stm_total = stm_diff = 0
    for sem in doc["stm"]:
        from test_refine_golden import decode

        for cat in sem["regions"]:
            m = decode(sem["labels"][cat])
            a, b = official_split_then_merge(m), split_then_merge(m)
            stm_total += 1
            stm_diff += len(a) != len(b) or not all(any(np.array_equal(x, y) for y in b) for x in a)
    report["golden"]["stm_differs"] = f"{stm_diff}/{stm_total}"
    if (args.data / "annotations.json").is_file():
        pairs = list(corrupted(args.data, args.images))
        report["corrupted"] = point_rules([c for c, _ in pairs], [t for _, t in pairs])
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
