"""What the official (AdelaiDet) target rules cost per training item, against a naive reference.

    python scripts/bench_targets.py [--data tests/data/coco_cc_by] [--short 800] [--repeats 3]

Times ``TrainDataset`` items (read, resize, flip, targets) at short side ``--short`` under
``--reference official`` with ``sap``'s centre of mass (one matrix product per mask, exact)
and with the naive reference (AdelaiDet's expression: ``mask · x`` and ``mask · y`` over every
pixel, then two sums), alternating item by item in one run, and checks both give the same
centres bit for bit. Then the same items under ``--reference sap``. One thread.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import segtrain.targets as targets  # noqa: E402
from segtrain.data import TrainDataset, load_dataset  # noqa: E402

FAST = targets.centres_of_mass_official


def naive_centres(masks: torch.Tensor) -> torch.Tensor:
    """AdelaiDet's centre-of-mass arithmetic as it is written (the reference)."""
    m = masks.bool()
    _, h, w = m.shape
    ys, xs = torch.arange(0, h, dtype=torch.float32), torch.arange(0, w, dtype=torch.float32)
    m00 = m.sum(dim=-1).sum(dim=-1).clamp(min=1e-6)
    return torch.stack([(m * xs).sum(dim=-1).sum(dim=-1) / m00, (m * ys[:, None]).sum(dim=-1).sum(dim=-1) / m00], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / "tests" / "data" / "coco_cc_by"))
    ap.add_argument("--short", type=int, default=800)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = Path(args.data)
    records, _, stats = load_dataset(data / "annotations.json", data / "images")
    sap = {"mask_target": "sap", "centre": "sap", "scale_box": "sap"}
    variants = {"official, sap's centre sums": (None, FAST), "official, naive centre sums": (None, naive_centres),
                "sap rules": (sap, FAST)}
    seconds = {name: 0.0 for name in variants}
    centres: dict[str, list[torch.Tensor]] = {name: [] for name in variants}
    for rep in range(args.repeats):
        for k in range(len(records)):
            for name, (rules, fn) in variants.items():
                targets.centres_of_mass_official = fn
                ds = TrainDataset(records, (args.short,), 1333, 0.5, rules=rules)
                t = time.perf_counter()
                item = ds[(k, rep * len(records) + k)]
                seconds[name] += time.perf_counter() - t
                centres[name].append(item.targets.centers)
    targets.centres_of_mass_official = FAST
    same = all(torch.equal(a, b) for a, b in zip(centres["official, sap's centre sums"],
                                                 centres["official, naive centre sums"]))
    n = args.repeats * len(records)
    print(f"{data.name}: {stats.summary()}; short side {args.short}, {n} items per variant, 1 thread")
    for name, s in seconds.items():
        print(f"  {name}: {s / n * 1000:.0f} ms per item")
    print(f"  centres bit-identical to the naive reference: {same}")


if __name__ == "__main__":
    main()
