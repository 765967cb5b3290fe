"""Train the pocket SAM from scratch on generated scenes and write its weights.

    python scripts/train_pocket_sam.py                       # the committed weights, seed 0
    nice -n 10 python scripts/train_pocket_sam.py --out /tmp/pocket.pth --eval 40

The pocket SAM is SAM's own architecture (segment_anything's ImageEncoderViT, PromptEncoder,
MaskDecoder) at a small width and a small input frame (256², 16-px patches: a 16×16×64
embedding and 64² logits; the engine maps prompts and masks from and to SAM's 1024 / 256²
frames), trained with SAM's recipe (:mod:`pseudolabel.pocket.train`) on the procedural scenes
of :mod:`pseudolabel.pocket.scenes`. It is not SAM and is not for real photos.

The weights are a function of the recipe and the seed: one torch thread, a fixed number of
steps, every random draw seeded from ``--seed`` and the step. They are written as an fp16 state
dict (``pseudolabel/core/weights/sam_pocket.pth`` by default) with a JSON record beside them
(recipe, versions, sha256, CPU and wall time, load average); ``--resume`` continues an
interrupted run from the ``.partial`` state saved every 100 steps, with the same result.

``--coarse-share S`` (0 in the committed recipe) starts a share S of the scenes from SAMRefiner's
first prompt (:func:`samrefiner_prompts`) on a rough mask of the target: the model then refines
better and clicks worse (docs/pocket.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pseudolabel.core.config import versions  # noqa: E402
from pseudolabel.core.io import atomic_path  # noqa: E402
from pseudolabel.core.engines.loading import WEIGHTS_DIR, sha256_of  # noqa: E402
from pseudolabel.pocket.train import PocketConfig, train  # noqa: E402


def fp16_state(model) -> dict:
    """The state dict with floating tensors in fp16 (half the file; loading casts back)."""
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}


def samrefiner_prompts(rough, resized: tuple[int, int]) -> dict:
    """SAMRefiner's first prompts for rough masks, as `sap refine` builds them (official rules:
    positive and negative point, tight box, Gaussian mask prompt; no CEBox, which needs the
    image's features): the ``coarse_prompts`` of :func:`pseudolabel.pocket.train.train`."""
    from refine.refiner import PromptState, RefineConfig, build_prompts

    return build_prompts(PromptState(rough, RefineConfig(engine="sam_pocket"), None), resized)


def recipe_parser(doc: str, config_cls, default_out: Path) -> argparse.ArgumentParser:
    """``--out``, ``--resume`` and one flag per int/float field of the recipe dataclass."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--out", default=str(default_out), help="weights file to write")
    ap.add_argument("--resume", action="store_true", help="continue from OUT.partial")
    for f in fields(config_cls):
        if f.type in ("int", "float"):
            ap.add_argument("--" + f.name.replace("_", "-"), type=int if f.type == "int" else float,
                            default=f.default, help=f"recipe: {f.name} (default {f.default})")
    return ap


def recipe_run(args, config_cls):
    """``(recipe, out, partial, resume state or None, save)`` of parsed :func:`recipe_parser` flags:
    ``save(state)`` writes ``OUT.partial`` atomically, ``--resume`` reads it back."""
    cfg = config_cls(**{f.name: getattr(args, f.name) for f in fields(config_cls) if hasattr(args, f.name)})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(out.suffix + ".partial")
    resume = None
    if args.resume and partial.is_file():
        resume = torch.load(partial, map_location="cpu", weights_only=True)
        print(f"resuming from step {resume['step']}", flush=True)

    def save(state: dict) -> None:
        with atomic_path(partial) as tmp:
            torch.save(state, tmp)

    return cfg, out, partial, resume, save


def main(argv: list[str] | None = None) -> int:
    ap = recipe_parser(__doc__, PocketConfig, WEIGHTS_DIR / "sam_pocket.pth")
    ap.add_argument("--eval", type=int, default=0, metavar="N", help="then measure on N held-out scenes")
    args = ap.parse_args(argv)
    cfg, out, partial, resume, save = recipe_run(args, PocketConfig)
    load0 = os.getloadavg()
    t0, cpu0 = time.perf_counter(), time.process_time()
    model = train(cfg, log=lambda line: print(line, flush=True), resume=resume, save_every=100, save=save,
                  coarse_prompts=samrefiner_prompts if cfg.coarse_share else None)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    with atomic_path(out) as tmp:
        torch.save(fp16_state(model), tmp)
    partial.unlink(missing_ok=True)
    digest = sha256_of(out)
    record = {"recipe": asdict(cfg), "sha256": digest, "bytes": out.stat().st_size,
              "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "resumed_from": resume and resume["step"],
              "loadavg_start": [round(x, 2) for x in load0], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
              "cpu": _cpu_name(), "versions": versions()}
    if args.eval:
        record["held_out"] = evaluate(out, args.eval, cfg.seed)
    with atomic_path(out.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out} ({record['bytes'] / 1e6:.1f} MB, sha256 {digest}) after {cfg.steps} steps: "
          f"{wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU, load {load0[0]:.1f} → {os.getloadavg()[0]:.1f}")
    return 0


def evaluate(weights: Path, n: int, seed: int) -> dict:
    """Point-prompt quality of the written weights on ``n`` held-out scenes (centre clicks)."""
    from pseudolabel.core.engines.loading import create_engine
    from pseudolabel.pocket.quality import held_out_scenes, point_prompt_quality

    engine = create_engine("sam_pocket", str(weights), "cpu", "fp32")
    scenes = held_out_scenes(n, seed)
    result = {}
    for click in ("center", "uniform"):
        q = point_prompt_quality(engine, scenes, click=click, seed=seed)
        result[click] = {k: round(q[k], 4) if isinstance(q[k], float) else q[k]
                         for k in ("miou_best3", "miou_top1", "spearman", "n")}
        print(f"held-out {click} clicks: best-of-3 mIoU {q['miou_best3']:.3f}, top-1 {q['miou_top1']:.3f}, "
              f"Spearman(pred, true IoU) {q['spearman']:.3f} over {q['n']} objects", flush=True)
    return result


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
