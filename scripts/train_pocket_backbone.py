"""Pretrain the pocket backbone (a half-width ResNet-18) on generated scenes and write its weights.

    python scripts/train_pocket_backbone.py                     # the committed recipe (2 500 steps, ~40 CPU min)
    python scripts/train_pocket_backbone.py --out /tmp/b.pth --steps 200 --eval-every 25

The recipe is :mod:`pseudolabel.pocket.backbone`: supervised classification of object crops
(five shape kinds, ``part``, ``background``) from scenes of their own split, as ImageNet
pretraining classifies object photos. It stands in for the ImageNet ResNet SAPNet's selector
starts from (``sap select --backbone resnet18_half --backbone-weights pocket``).

The weights are written as an fp16 torchvision state dict
(``pseudolabel/core/weights/resnet18_half_pocket.pth`` by default) with a JSON record beside them
(recipe, training curve, versions, sha256, CPU and wall time, load average); ``--resume``
continues an interrupted run from the ``.partial`` state saved every 100 steps.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pseudolabel.core.config import versions  # noqa: E402
from pseudolabel.core.engines.loading import WEIGHTS_DIR, sha256_of  # noqa: E402
from pseudolabel.core.io import atomic_path  # noqa: E402
from pseudolabel.pocket.backbone import BackboneConfig, pretrain  # noqa: E402
from train_pocket_sam import _cpu_name, fp16_state, recipe_parser, recipe_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = recipe_parser(__doc__, BackboneConfig, WEIGHTS_DIR / "resnet18_half_pocket.pth")
    ap.add_argument("--eval-every", type=int, default=250, help="held-out accuracy every N steps")
    args = ap.parse_args(argv)
    cfg, out, partial, resume, save = recipe_run(args, BackboneConfig)
    load0 = os.getloadavg()
    t0, cpu0 = time.perf_counter(), time.process_time()
    model, curve = pretrain(cfg, log=lambda line: print(line, flush=True), eval_every=args.eval_every,
                            resume=resume, save=save, save_every=100)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    with atomic_path(out) as tmp:
        torch.save(fp16_state(model), tmp)
    partial.unlink(missing_ok=True)
    digest = sha256_of(out)
    record = {"recipe": asdict(cfg), "sha256": digest, "bytes": out.stat().st_size, "curve": curve,
              "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "resumed_from": resume and resume["step"],
              "loadavg_start": [round(x, 2) for x in load0], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
              "cpu": _cpu_name(), "versions": versions()}
    with atomic_path(out.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out} ({record['bytes'] / 1e6:.1f} MB, sha256 {digest}) after {cfg.steps} steps: "
          f"{wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU, held-out accuracy {curve[-1]['held_out_acc']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
