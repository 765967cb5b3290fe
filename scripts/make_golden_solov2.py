"""Golden vectors of AdelaiDet's SOLOv2 target assignment (``sap train --reference official``).

Not run by the test suite. It executes AdelaiDet's own ``SOLOv2.get_ground_truth_single``
(adet/modeling/solov2/solov2.py) and the ``utils.py`` helpers it calls (``imrescale`` and the
functions below it, ``center_of_mass``), read from a checkout given on the command line and
parsed with ``ast``, so neither detectron2 nor fvcore nor AdelaiDet's compiled layers are needed:
the instances are a stand-in object with ``gt_boxes.tensor``, ``gt_classes`` and
``gt_masks.tensor``, exactly what the function reads.

    python scripts/make_golden_solov2.py --adelaidet /path/to/AdelaiDet --out tests/data/golden/

``--adelaidet`` is a checkout of aim-uofa/AdelaiDet (3672122). Writes ``solov2_targets.json``:
per case the input (image and padded sizes, labels, XYXY boxes in the input frame, input-frame
masks as COCO RLE) and, per level, AdelaiDet's category grid (positive cells with their class),
``grid_order`` (the cell of each mask target, in AdelaiDet's order) and each mask target (an
index into the case's list of distinct stride-4 targets, RLE at the size of the mask features).

Cases: the CC-BY test photos (tests/data/coco_cc_by) at two short sides, flipped or not, padded
alone or beside a larger partner; and hand-made scenes: touching objects, two objects with the
same centre cell (both annotation orders), boxes at every scale-range boundary and just inside
and outside it, objects at the four image edges and corners, an annotation whose bbox disagrees
with its mask, an empty mask, and odd image sizes.

Nothing of AdelaiDet's code is copied: it is parsed from the checkout and executed.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pseudolabel.core.rle import decode_rles, encode_mask  # noqa: E402
from segtrain.data import boxes_to_input_frame, load_dataset, masks_to_input_frame, resized_hw  # noqa: E402

SOLOV2 = "adet/modeling/solov2"
#: AdelaiDet's defaults (adet/config/defaults.py, MODEL.SOLOV2)
SETTINGS = {"num_grids": [40, 36, 24, 16, 12], "strides": [8, 8, 16, 32, 32], "sigma": 0.2,
            "scale_ranges": [[1, 96], [48, 192], [96, 384], [192, 768], [384, 2048]], "num_classes": 80}


def load_official(root: Path) -> tuple[types.SimpleNamespace, callable]:
    """A stand-in ``SOLOv2`` holding the settings, and AdelaiDet's ``get_ground_truth_single``."""
    ns: dict = {"torch": torch, "F": F, "cv2": cv2, "math": math}
    utils = ast.parse((root / SOLOV2 / "utils.py").read_text(encoding="utf-8"))
    keep = {"_scale_size", "interp_codes", "imresize", "rescale_size", "imrescale", "center_of_mass"}
    body = [n for n in utils.body if (isinstance(n, ast.FunctionDef) and n.name in keep)
            or (isinstance(n, ast.Assign) and any(getattr(t, "id", "") in keep for t in n.targets))]
    exec(compile(ast.Module(body=body, type_ignores=[]), str(root / SOLOV2 / "utils.py"), "exec"), ns)
    tree = ast.parse((root / SOLOV2 / "solov2.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SOLOv2")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "get_ground_truth_single")
    fn.decorator_list = []
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(root / SOLOV2 / "solov2.py"), "exec"), ns)
    model = types.SimpleNamespace(scale_ranges=[tuple(r) for r in SETTINGS["scale_ranges"]],
                                  strides=SETTINGS["strides"], num_grids=SETTINGS["num_grids"],
                                  sigma=SETTINGS["sigma"], num_classes=SETTINGS["num_classes"])
    return model, ns["get_ground_truth_single"]


def instances(masks: np.ndarray, labels: list[int], boxes: np.ndarray) -> types.SimpleNamespace:
    """What ``get_ground_truth_single`` reads of detectron2's ``Instances``."""
    return types.SimpleNamespace(gt_boxes=types.SimpleNamespace(tensor=torch.tensor(boxes, dtype=torch.float32)),
                                 gt_classes=torch.tensor(labels, dtype=torch.int64),
                                 gt_masks=types.SimpleNamespace(tensor=torch.from_numpy(masks.astype(bool))))


def run_case(model, gt_single, name: str, masks: np.ndarray, labels: list[int], boxes: np.ndarray,
             padded_hw: tuple[int, int]) -> dict:
    """One case: the inputs and AdelaiDet's targets on every level."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    feat = (padded_hw[0] // 4, padded_hw[1] // 4)
    ins, cates, _, orders = gt_single(model, 0, [instances(masks, labels, boxes)], mask_feat_size=feat)
    targets: list[str] = []
    levels = []
    for ins_label, cate, order in zip(ins, cates, orders):
        refs = []
        for m in ins_label.numpy().astype(np.uint8):
            rle = encode_mask(m)["counts"]
            if rle not in targets:
                targets.append(rle)
            refs.append(targets.index(rle))
        flat = cate.flatten()
        pos = (flat != model.num_classes).nonzero().flatten().tolist()
        levels.append({"positive": [[c, int(flat[c])] for c in pos], "grid_order": [int(c) for c in order],
                       "mask_targets": refs})
    return {"name": name, "image_hw": list(masks.shape[1:]), "padded_hw": list(padded_hw), "labels": list(labels),
            "boxes": [[float(v) for v in b] for b in boxes], "masks": [encode_mask(m)["counts"] for m in masks],
            "target_hw": list(feat), "targets": targets, "levels": levels}


def pad32(v: int) -> int:
    return -(-v // 32) * 32


def photo_cases(model, gt_single) -> list[dict]:
    data = REPO / "tests" / "data" / "coco_cc_by"
    records, _, _ = load_dataset(data / "annotations.json", data / "images")
    out = []
    for k, rec in enumerate(records):
        for short, flip, extra in ((160, False, 0), (257, True, 64)):
            h, w = resized_hw(rec.height, rec.width, short, 1333)
            masks = masks_to_input_frame(decode_rles(rec.rles), (h, w), flip)
            boxes = boxes_to_input_frame(np.array(rec.boxes), (rec.height, rec.width), (h, w), flip)
            out.append(run_case(model, gt_single, f"photo {rec.file_name} short {short} flip {flip} pad +{extra}",
                                masks, rec.labels, boxes, (pad32(h) + extra, pad32(w) + extra)))
    return out


def rect(hw: tuple[int, int], x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    """A 0/1 mask of ``hw`` with the rectangle ``[x1, x2) × [y1, y2)`` set."""
    m = np.zeros(hw, dtype=np.uint8)
    m[y1:y2, x1:x2] = 1
    return m


def scene(name: str, hw: tuple[int, int], objects: list[tuple], padded: tuple[int, int] | None = None) -> tuple:
    """``objects``: ``(mask, label, box or None)``; ``None`` boxes are the mask's tight box."""
    masks = np.stack([o[0] for o in objects])
    boxes = []
    for m, _, box in objects:
        if box is None:
            ys, xs = np.nonzero(m)
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0]
        boxes.append(box)
    return name, masks, [o[1] for o in objects], np.array(boxes, dtype=np.float32), \
        padded or (pad32(hw[0]), pad32(hw[1]))


def handmade_scenes() -> list[tuple]:
    hw = (203, 310)  # odd sizes: int(w/4 + 0.5) rounding
    ring = rect(hw, 60, 40, 200, 180) - rect(hw, 100, 80, 160, 140)
    inner = rect(hw, 115, 95, 145, 125)
    scenes = [
        scene("touching objects", hw, [(rect(hw, 40, 50, 120, 150), 1, None), (rect(hw, 120, 50, 200, 150), 2, None),
                                       (rect(hw, 40, 150, 200, 170), 3, None)]),
        scene("same centre cell, small first", hw, [(inner, 4, None), (ring, 5, None)]),
        scene("same centre cell, large first", hw, [(ring, 5, None), (inner, 4, None)]),
        scene("same centre cell, same size", hw, [(rect(hw, 100, 90, 140, 130), 6, None),
                                                  (rect(hw, 101, 91, 141, 131), 7, None)]),
        scene("image edges and corners", hw, [
            (rect(hw, 0, 80, 30, 120), 1, None), (rect(hw, 280, 80, 310, 120), 2, None),
            (rect(hw, 140, 0, 180, 25), 3, None), (rect(hw, 140, 180, 180, 203), 4, None),
            (rect(hw, 0, 0, 12, 9), 5, None), (rect(hw, 297, 190, 310, 203), 6, None)]),
        scene("image edges, padded beside a larger partner", hw, [
            (rect(hw, 280, 80, 310, 120), 2, None), (rect(hw, 140, 180, 180, 203), 4, None),
            (rect(hw, 297, 190, 310, 203), 6, None)], padded=(288, 384)),
        scene("bbox disagrees with its mask", hw, [
            (rect(hw, 50, 50, 90, 90), 1, [30.0, 45.0, 140.0, 95.0]),  # a bbox larger than the mask
            (rect(hw, 150, 60, 250, 160), 2, [160.5, 70.25, 230.0, 120.0]),  # a smaller, shifted bbox
            (rect(hw, 20, 120, 60, 200), 3, [200.0, 10.0, 240.0, 90.0])]),  # a bbox elsewhere
        scene("an empty mask among others", hw, [(rect(hw, 50, 50, 90, 90), 1, None),
                                                 (np.zeros(hw, np.uint8), 2, [10.0, 10.0, 50.0, 50.0]),
                                                 (rect(hw, 150, 60, 250, 160), 3, None)]),
        scene("thin and tiny objects", hw, [(rect(hw, 10, 10, 11, 200), 1, None), (rect(hw, 30, 30, 32, 31), 2, None),
                                            (rect(hw, 50, 100, 53, 103), 3, None)]),
    ]
    big = (800, 1344)
    objects = []
    x = 0
    for k, edge in enumerate((48, 96, 192, 384, 768)):  # each boundary, just below and just above it
        for side in (edge - 0.01, float(edge), edge + 0.01):
            objects.append((rect(big, x % 1200, 20, x % 1200 + 40, 60), k + 1, [10.0, 10.0, 10.0 + side, 10.0 + side]))
            x += 50
    objects.append((rect(big, 600, 300, 700, 400), 9, [0.0, 0.0, 1.0, 1.0]))  # sqrt(w·h) = 1: the lowest bound
    objects.append((rect(big, 700, 300, 800, 400), 9, [0.0, 0.0, 0.5, 1.0]))  # below every range
    objects.append((rect(big, 100, 100, 1300, 790), 10, [0.0, 0.0, 2048.0, 2048.0]))  # the highest bound
    objects.append((rect(big, 100, 100, 1300, 790), 11, [0.0, 0.0, 2048.0, 2049.0]))  # above every range
    scenes.append(scene("every scale-range boundary, just inside and outside", big, objects))
    return scenes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adelaidet", required=True, type=Path, help="a checkout of aim-uofa/AdelaiDet (3672122)")
    ap.add_argument("--out", default=str(REPO / "tests" / "data" / "golden"), type=Path)
    args = ap.parse_args()
    model, gt_single = load_official(args.adelaidet)
    cases = photo_cases(model, gt_single)
    cases += [run_case(model, gt_single, name, masks, labels, boxes, padded)
              for name, masks, labels, boxes, padded in handmade_scenes()]
    doc = {"source": "aim-uofa/AdelaiDet @ 3672122: adet/modeling/solov2/solov2.py get_ground_truth_single, "
                     "utils.py imrescale and center_of_mass, run by scripts/make_golden_solov2.py",
           "torch": torch.__version__, "opencv": cv2.__version__, "settings": SETTINGS, "cases": cases}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "solov2_targets.json"
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    pairs = sum(len(lv["grid_order"]) for c in cases for lv in c["levels"])
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB): {len(cases)} cases, {pairs} mask targets")


if __name__ == "__main__":
    main()
