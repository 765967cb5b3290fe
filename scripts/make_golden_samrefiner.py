"""Make the SAMRefiner golden vectors in tests/data/golden/ by running the OFFICIAL code.

    python scripts/make_golden_samrefiner.py --official /path/to/SAMRefiner [--out tests/data/golden]

Not run by CI. It needs a throwaway environment holding what the official code imports
(FastGeodis, built with ``pip install 'setuptools<70'`` then ``pip install --no-build-isolation
FastGeodis``; torch, OpenCV, SciPy, matplotlib, pycocotools) and a checkout of
github.com/linyq2117/SAMRefiner (commit 0b2db8c). Nothing of the official code is copied here: its
functions are imported from ``--official`` and called on fixed inputs.

Inputs (all regenerable): the 36 masks of tests/data/coco_cc_by/annotations.json, one corrupted
variant of each (dilated, eroded, holed, cut; seeded), a few hand-made edge cases on a small
canvas, and per canvas a synthetic ``1×256×64×64`` SAM embedding made by
:func:`synthetic_embedding` from a seed (tests/test_refine_golden.py makes the same one).

Outputs:
- ``samrefiner_prompts.json``: per mask its RLE and the official first-iteration prompts:
  positive and negative point ``(x, y)``, tight box and CEBox box (margin 0.1) ``[x0, y0, x1, y1]``
  as handed to SAM (before ResizeLongestSide), CEBox's per-mask "expanded" flag; the STM
  partitions of semantic maps made from the same annotations.
- ``samrefiner_maps.npz``: for a handful of masks the official Gaussian map (cropped to the
  tight box) and the 256×256 ``mask_input`` (float32).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parents[1]
GAMMA, STRENGTH, MARGIN = 4.0, 30.0, 0.1
CORRUPTIONS = ("dilate", "erode", "holes", "cut")


def synthetic_embedding(seed: int, cells: int = 40, grid: int = 64, channels: int = 256) -> np.ndarray:
    """A ``1×channels×grid×grid`` float32 embedding: random Voronoi cells, each with its own
    random feature, plus noise. Same seed → same array (NumPy's PCG64)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, grid, size=(cells, 2))
    protos = rng.standard_normal((cells, channels))
    yy, xx = np.mgrid[0:grid, 0:grid]
    d2 = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    emb = protos[d2.argmin(-1)] + 1.0 * rng.standard_normal((grid, grid, channels))
    return np.ascontiguousarray(emb.transpose(2, 0, 1)[None], dtype=np.float32)


def corrupt(mask: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A seeded corrupted copy of a binary mask (uint8 0/1)."""
    m = mask.astype(np.uint8)
    k = np.ones((7, 7), np.uint8)
    if kind == "dilate":
        out = cv2.dilate(m, k, iterations=int(rng.integers(1, 4)))
    elif kind == "erode":
        out = cv2.erode(m, np.ones((3, 3), np.uint8), iterations=int(rng.integers(1, 3)))
        if not out.any():
            out = m
    elif kind == "holes":
        out = m.copy()
        ys, xs = np.nonzero(m)
        for _ in range(4):
            i = rng.integers(len(ys))
            cv2.circle(out, (int(xs[i]), int(ys[i])), int(rng.integers(2, 12)), 0, -1)
        if not out.any():
            out = m
    elif kind == "cut":
        ys, xs = np.nonzero(m)
        out = m.copy()
        if rng.random() < 0.5:
            cut = int(np.percentile(xs, rng.uniform(20, 45)))
            out[:, :cut] = 0
        else:
            cut = int(np.percentile(ys, rng.uniform(55, 80)))
            out[cut:, :] = 0
        if not out.any():
            out = m
    else:
        raise ValueError(kind)
    return out.astype(np.uint8)


def edge_cases() -> list[tuple[str, np.ndarray]]:
    """Hand-made masks on a 37×53 canvas: border contact, full box, single pixel, thin lines."""
    h, w = 37, 53
    cases = []
    m = np.zeros((h, w), np.uint8); m[5:20, 8:30] = 1; cases.append(("rectangle", m))
    m = np.zeros((h, w), np.uint8); m[0:12, 0:17] = 1; cases.append(("corner", m))
    m = np.zeros((h, w), np.uint8); m[20:37, 30:53] = 1; m[25:30, 40:45] = 0; cases.append(("corner_hole", m))
    m = np.zeros((h, w), np.uint8); m[10, 10] = 1; cases.append(("pixel", m))
    m = np.zeros((h, w), np.uint8); m[14, 3:40] = 1; cases.append(("row", m))
    m = np.zeros((h, w), np.uint8); m[2:35, 44] = 1; cases.append(("column", m))
    m = np.zeros((h, w), np.uint8); cv2.circle(m, (26, 18), 11, 1, -1); cases.append(("disc", m))
    m = np.zeros((h, w), np.uint8); cv2.circle(m, (26, 18), 13, 1, 3); cases.append(("ring", m))
    m = np.zeros((h, w), np.uint8); m[3:9, 3:9] = 1; m[25:33, 35:50] = 1; cases.append(("two_parts", m))
    m = np.zeros((h, w), np.uint8); m[4:30, 5:40] = 1; m[10:30, 12:33] = 0; cases.append(("u_shape", m))
    m = np.zeros((h, w), np.uint8); m[:, :] = 1; m[0, 0] = 0; cases.append(("almost_full", m))
    return cases


def to_rle(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def canvases(rng: np.random.Generator) -> list[dict]:
    """Each canvas: an image size, its masks (name, uint8 H×W) and an embedding seed."""
    coco = json.loads((REPO / "tests/data/coco_cc_by/annotations.json").read_text())
    out = []
    for seed, img in enumerate(coco["images"]):
        h, w = img["height"], img["width"]
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        masks = []
        for a in anns:
            seg = a["segmentation"]
            rle = seg if isinstance(seg, dict) and not isinstance(seg["counts"], list) else \
                mask_utils.frPyObjects(seg, h, w)
            masks.append((f"ann{a['id']}", mask_utils.decode(rle).astype(np.uint8)))
        for i, (name, m) in enumerate(list(masks)):
            kind = CORRUPTIONS[(i + seed) % len(CORRUPTIONS)]
            masks.append((f"{name}_{kind}", corrupt(m, kind, rng)))
        if not masks:
            continue
        out.append({"name": f"image{img['id']}", "image_id": img["id"], "height": h, "width": w,
                    "seed": 1000 + seed, "masks": masks})
    cases = edge_cases()
    out.append({"name": "edge_cases", "image_id": None, "height": 37, "width": 53, "seed": 2000,
                "masks": cases})
    return out


def semantic_maps(rng: np.random.Generator) -> list[dict]:
    """Class maps of the test photos (later annotations paint over earlier ones), and a
    fragmented copy of each (every object cut by a few background lines)."""
    coco = json.loads((REPO / "tests/data/coco_cc_by/annotations.json").read_text())
    out = []
    for img in coco["images"]:
        h, w = img["height"], img["width"]
        sem = np.zeros((h, w), np.uint8)
        for a in coco["annotations"]:
            if a["image_id"] == img["id"]:
                sem[mask_utils.decode(a["segmentation"]).astype(bool)] = a["category_id"]
        frag = sem.copy()
        for _ in range(6):
            if rng.random() < 0.5:
                frag[:, int(rng.integers(w)):][:, :int(rng.integers(1, 4))] = 0
            else:
                frag[int(rng.integers(h)):][:int(rng.integers(1, 4))] = 0
        noise = rng.random((h, w)) < 0.0005
        frag[noise] = sem.max() if sem.max() > 0 else 1
        out.append({"name": f"image{img['id']}", "map": sem})
        out.append({"name": f"image{img['id']}_fragmented", "map": frag})
    return out


def official_stm(sem2ins, sem: np.ndarray) -> dict:
    """Category → list of region masks, as the official split-then-merge script makes them."""
    out = {}
    for cat in np.unique(sem):
        if cat == 0:
            continue
        cate = (sem == cat).astype(np.uint8)
        n, labels, stats, cents = cv2.connectedComponentsWithStats(cate, connectivity=8)
        n_merge, _, masks = sem2ins.merge_regions(n - 1, stats[1:], cents[1:], labels)
        if masks is None:
            masks = [labels == k for k in range(1, n_merge + 1)]
        out[int(cat)] = [to_rle(np.asarray(m, np.uint8)) for m in masks]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, required=True, help="checkout of linyq2117/SAMRefiner")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "golden")
    ap.add_argument("--maps", type=int, default=8, help="masks whose Gaussian and mask_input are stored")
    args = ap.parse_args()
    sys.path[:0] = [str(args.official), str(args.official / "segment-anything")]
    import FastGeodis  # noqa: F401  (the official utils import it; fail early with its name)
    import sem2ins_mask
    import utils as official
    from segment_anything.utils.transforms import ResizeLongestSide

    try:
        commit = subprocess.run(["git", "-C", str(args.official), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "0b2db8c667f1b25f633f99ad3942e9ecda0101df (given)"
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    resize = ResizeLongestSide(1024)
    doc = {"source": {"repository": "linyq2117/SAMRefiner", "commit": commit,
                      "functions": ["utils.extract_points", "utils.extract_bboxes_expand",
                                    "utils.extract_mask", "sem2ins_mask.merge_regions"]},
           "versions": {"torch": torch.__version__, "numpy": np.__version__,
                        "fastgeodis": getattr(FastGeodis, "__version__", "1.0.5")},
           "settings": {"gamma": GAMMA, "strength": STRENGTH, "cebox_margin": MARGIN,
                        "embedding": "synthetic_embedding(seed, cells=40, noise 1.0)"},
           "canvases": [], "stm": []}
    maps: dict[str, np.ndarray] = {}
    n_maps = 0
    for canvas in canvases(rng):
        h, w = canvas["height"], canvas["width"]
        names = [n for n, _ in canvas["masks"]]
        masks = torch.from_numpy(np.stack([m for _, m in canvas["masks"]])).to(torch.uint8)
        emb = torch.from_numpy(synthetic_embedding(canvas["seed"]))
        input_size = resize.get_preprocess_shape(h, w, 1024)
        coords, labels, gaus = official.extract_points(masks, add_neg=True, use_mask=True, gamma=GAMMA)
        boxes, _, _, _ = official.extract_bboxes_expand(emb, masks, margin=0.0)
        ceboxes, _, _, expand = official.extract_bboxes_expand(emb, masks, margin=MARGIN)
        mask_input = official.extract_mask(masks, gaus, input_size, is01=True, strength=STRENGTH,
                                           device="cpu", expand_list=torch.zeros(len(masks)))
        # With CEBox on, the official strength of every mask of the image follows the last mask's flag.
        mask_input_cebox = official.extract_mask(masks, gaus, input_size, is01=True, strength=STRENGTH,
                                                 device="cpu", expand_list=expand)
        entry = {"name": canvas["name"], "image_id": canvas["image_id"], "height": h, "width": w,
                 "input_size": list(input_size), "embedding_seed": canvas["seed"],
                 "embedding_check": [float(emb.double().sum()), *[float(v) for v in emb[0, :3, 0, 0]]],
                 "masks": []}
        for i, name in enumerate(names):
            m = masks[i].numpy()
            rec = {"name": name, "rle": to_rle(m),
                   "pos": [int(v) for v in coords[i, 0]], "neg": [int(v) for v in coords[i, 1]],
                   "labels": [int(v) for v in labels[i]],
                   "box": [int(v) for v in boxes[i]], "cebox": [int(v) for v in ceboxes[i]],
                   "cebox_expanded": bool(expand[i]),
                   "mask_input_cebox_amplitude": float(mask_input_cebox[i].abs().max())}
            small = m.sum() < 40000 and m.any()
            if n_maps < args.maps and small and (i % 5 == 2 or canvas["name"] == "edge_cases" and i in (2, 7)):
                key = f"{canvas['name']}/{name}"
                ys, xs = np.nonzero(m)
                y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
                maps[f"{key}/gaussian"] = gaus[i, y0:y1, x0:x1].numpy().astype(np.float32)
                maps[f"{key}/gaussian_origin"] = np.array([x0, y0], np.int64)
                maps[f"{key}/mask_input"] = mask_input[i, 0].numpy().astype(np.float32)
                rec["maps"] = key
                n_maps += 1
            entry["masks"].append(rec)
        doc["canvases"].append(entry)
        print(f"{canvas['name']}: {len(names)} masks, CEBox grew {int(expand.sum())}", flush=True)
    for sem in semantic_maps(rng):
        doc["stm"].append({"name": sem["name"], "map": to_rle(sem["map"] > 0),
                           "labels": {int(c): to_rle(sem["map"] == c) for c in np.unique(sem["map"]) if c},
                           "regions": official_stm(sem2ins_mask, sem["map"])})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "samrefiner_prompts.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    np.savez_compressed(args.out / "samrefiner_maps.npz", **maps)
    n = sum(len(c["masks"]) for c in doc["canvases"])
    print(f"{n} masks, {n_maps} maps, {len(doc['stm'])} semantic maps -> {args.out}")


if __name__ == "__main__":
    main()
