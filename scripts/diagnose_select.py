"""What a trained selector has learned, per proposal kind, on a `bench_select.py --scenes shapes` run.

Reads the run folder that ``scripts/bench_select.py --out DIR`` wrote (``data/``, ``points.json``,
``cache/``) and a selector checkpoint of it (``DIR/sapnet/selector.pt`` or ``DIR/mil/selector.pt``)
and prints, for each kind of synthetic proposal (part, whole, merged, ...):

* PSM (stage 0): the mean class probability at the point's label, how often the class argmax is
  the label, the mean instance share (softmax over the bag; 1/6 = no preference) and the mean
  ``cls × ins`` selection score. A MIL selector can only prefer the whole object if these differ.
* with ``--ablations`` (sapnet checkpoints): the final picks with the same weights when BMS or
  PPG is switched off at selection, and with the PSM alone (``mil`` from the sapnet weights).

    python scripts/bench_select.py --scenes shapes --n-images 40 --epochs 10 --out /tmp/b
    python scripts/diagnose_select.py /tmp/b --method sapnet --ablations
    python scripts/diagnose_select.py RUN --input-size 384   # a run with --min-size 384 --max-size 384
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_select import SHAPES, kind_counts, proposal_ious  # noqa: E402
from pseudolabel.selector import SelectConfig, run_select  # noqa: E402
from pseudolabel.testing.synthetic import LABELS, synthetic_bags  # noqa: E402

SELECTION_ABLATIONS = {"as trained": {}, "no BMS at selection": {"bms": False}, "no PPG at selection": {"pnpg": False},
                       "no BMS, no PPG": {"bms": False, "pnpg": False}, "PSM alone (mil)": {"method": "mil"}}


def stage0_by_kind(run: Path, cfg: SelectConfig, checkpoint: Path, gt: dict, bags: dict) -> np.ndarray:
    """``4×K``: mean class prob at the label, class accuracy, instance share, score, per kind."""
    from pseudolabel.selector.data import BagDataset
    from pseudolabel.testing.readout import stage_zero_readout
    from pseudolabel.selector.train import build_model, load_checkpoint, load_net_state

    cats = [c["id"] for c in gt["categories"]]
    state = load_checkpoint(checkpoint, cats, cfg)
    step = build_model(replace(cfg, backbone_weights="checkpoint"), len(cats), state.get("backbone_norm", "auto"))
    load_net_state(step, state)
    data = BagDataset(gt["images"], bags, run / "data" / "images", {c: i for i, c in enumerate(cats)},
                      cfg.max_size, cfg.min_size, 0.0, cfg.seed)
    r = stage_zero_readout(step, data)
    return np.stack([r.cls.mean(0), r.correct.mean(0), r.ins.mean(0), r.score.mean(0)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the --out folder of a bench_select.py --scenes shapes run")
    ap.add_argument("--method", default="sapnet", choices=("mil", "sapnet"))
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: RUN/METHOD/selector.pt")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--ablations", action="store_true", help="sapnet: selection-time ablations")
    ap.add_argument("--input-size", type=int, default=None,
                    help="the run's --min-size/--max-size (default: the scenes' side)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    run = args.run
    checkpoint = args.checkpoint or run / args.method / "selector.pt"
    gt = json.loads((run / "data" / "annotations.json").read_text())
    points = json.loads((run / "points.json").read_text())
    bags = synthetic_bags(gt, points)
    size = args.input_size or gt["images"][0]["width"]
    cfg = SelectConfig(method=args.method, backbone=args.backbone, backbone_weights="none", min_size=size,
                       max_size=size, npg_num=SHAPES["npg_num"], workers=0)
    table = stage0_by_kind(run, cfg, checkpoint, gt, bags)
    print(f"PSM (stage 0) of {checkpoint}, {len(points['annotations'])} points, by proposal kind")
    print("| | " + " | ".join(LABELS) + " |")
    print("|---|" + "---|" * len(LABELS))
    for name, row in zip(("class prob at the label", "class argmax = label", "instance share (1/6 = none)",
                          "score cls × ins"), table):
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    if not args.ablations or args.method != "sapnet":
        return
    ious = proposal_ious(gt, bags)
    print(f"\nselection-time ablations, same weights ({checkpoint})")
    print("| selection | mask mIoU | " + " | ".join(LABELS) + " |")
    print("|---|---|" + "---|" * len(LABELS))
    for name, flags in SELECTION_ABLATIONS.items():
        out = run / "diagnose" / f"{name.replace(' ', '_').replace(',', '')}.json"
        run_select(run / "points.json", run / "cache", out,
                   replace(cfg, weights=str(checkpoint), work_dir=str(run / "diagnose"), **flags),
                   images=run / "data" / "images")
        idx = [(a["id"], a["sap"]["proposal_index"]) for a in json.loads(out.read_text())["annotations"]]
        print(f"| {name} | {np.mean([ious[a][i] for a, i in idx]):.3f} | {kind_counts([i for _, i in idx])} |")


if __name__ == "__main__":
    main()
