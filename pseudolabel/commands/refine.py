"""`sap refine` (stage 3, SAMRefiner), `sap refine adapt` (SAMRefiner++) and `sap corrupt`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (ConfigOpt, DeviceOpt, EngineOpt, ImagesOpt, RefineEmbeddingsOpt, RefinePromptsOpt, SamCheckpointOpt, SamModelOpt,
                     SamPrecisionOpt, exit_for_failures, split_file_values)


commands = typer.Typer()


refine_app = typer.Typer(help="SAMRefiner: refine coarse masks (COCO JSON or PNG label maps) with SAM, SAM 2.1 or HQ-SAM.",
                         invoke_without_command=True, no_args_is_help=False)


@refine_app.callback()
def refine_cmd(
    ctx: typer.Context,
    ann: Annotated[Optional[Path], typer.Option("--ann", help="COCO JSON with coarse masks (RLE or polygons).")] = None,
    semantic: Annotated[Optional[Path], typer.Option("--semantic", help="Folder of PNG label maps to refine instead of --ann.")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of the images.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Refined COCO JSON (with --ann) or folder of PNGs (with --semantic).")] = None,
    reference: Annotated[Optional[str], typer.Option("--reference", help="Rules to follow: official (linyq2117/SAMRefiner's code, the default) or paper; single rules can be overridden in --config (docs/fidelity.md).")] = None,
    dump_prompts: Annotated[Optional[Path], typer.Option("--dump-prompts", help="Also write the prompts handed to SAM, one JSON line per annotation per iteration (--ann only).")] = None,
    iters: Annotated[Optional[int], typer.Option("--iters", help="Refinement iterations (default 5).")] = None,
    prompts: RefinePromptsOpt = None,
    negative_point: Annotated[Optional[bool], typer.Option("--negative-point/--no-negative-point", help="Add the distance-guided negative point (default on).")] = None,
    negative_fallback: Annotated[Optional[str], typer.Option("--negative-fallback", help="When the box holds no background: origin (pixel (0,0), official) or omit (paper).")] = None,
    cebox_margin: Annotated[Optional[float], typer.Option("--cebox-margin", help="CEBox growth margin (0 = off: official; paper 0.1).")] = None,
    strength: Annotated[Optional[float], typer.Option("--strength", help="Mask-prompt amplitude (official 30, paper 15).")] = None,
    gamma: Annotated[Optional[float], typer.Option("--gamma", help="Mask-prompt span (default 4).")] = None,
    grown_strength: Annotated[Optional[float], typer.Option("--grown-strength", help="Mask-prompt amplitude where CEBox grew the box (default 1).")] = None,
    multimask: Annotated[Optional[bool], typer.Option("--multimask/--single-mask", help="Keep the best of SAM's 3 outputs (default) or its single output.")] = None,
    adapter: Annotated[Optional[str], typer.Option("--adapter", help="SAMRefiner++ adapter from `sap refine adapt`.")] = None,
    embeddings: RefineEmbeddingsOpt = None,
    engine: EngineOpt = None,
    model: SamModelOpt = None,
    checkpoint: SamCheckpointOpt = None,
    precision: SamPrecisionOpt = None,
    device: DeviceOpt = None,
    chunk: Annotated[Optional[int], typer.Option("--chunk", help="Objects per decoder call (0 = 4 on a CPU, 64 on a GPU).")] = None,
    stm_mu: Annotated[Optional[float], typer.Option("--stm-mu", help="Split-then-merge threshold (semantic; default 0.5).")] = None,
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", help="Semantic: labels 0..N-1 are classes; others (but the ignore label) are an error.")] = None,
    ignore_label: Annotated[Optional[int], typer.Option("--ignore-label", help="Semantic: label left alone (default 255).")] = None,
    background: Annotated[Optional[int], typer.Option("--background", help="Semantic: background label, not refined (default 0).")] = None,
    windows: Annotated[Optional[str], typer.Option("--windows", help="auto | off | PIXELS: refine the masks of images far larger than the engine's frame in windows around them (as sap proposals; docs/windows.md).")] = None,
    window_scale: Annotated[Optional[float], typer.Option("--window-scale", help="Cut windows at this scale (1 = native pixels).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Reuse OUT.partial.jsonl of an interrupted run with the same input and settings.")] = True,
    config: ConfigOpt = None,
) -> None:
    """Refine coarse masks with SAMRefiner (distance-guided points, CEBox, Gaussian mask prompt)."""
    if ctx.invoked_subcommand is not None:
        return
    from pseudolabel.core.config import load_config_file, resolve
    from pseudolabel.core.errors import InputError
    from refine.refiner import RefineConfig
    from refine.semantic import SemanticConfig

    if (ann is None) == (semantic is None) or images is None or out is None:
        raise InputError("sap refine needs either --ann or --semantic, and --images and --out "
                         "(see sap refine --help)")
    file_refine, file_sem = split_file_values(load_config_file(config), RefineConfig, SemanticConfig)
    cfg = resolve(RefineConfig(), file_refine, reference=reference, iters=iters, prompts=prompts, negative_point=negative_point,
                  negative_fallback=negative_fallback, cebox_margin=cebox_margin, strength=strength,
                  gamma=gamma, grown_strength=grown_strength, multimask=multimask, adapter=adapter,
                  embeddings=embeddings, engine=engine, model=model, checkpoint=checkpoint, precision=precision,
                  device=device, chunk=chunk, windows=windows, window_scale=window_scale)
    if semantic is not None:
        from pseudolabel.core.io import check_output_dir
        from refine.semantic import refine_semantic

        check_output_dir(out, "--out")
        if embeddings is not None or dump_prompts is not None:
            raise InputError("--embeddings and --dump-prompts work with --ann only (label maps have no annotation ids)")
        scfg = resolve(SemanticConfig(), file_sem, stm_mu=stm_mu, num_classes=num_classes,
                       ignore_label=ignore_label, background=background)
        summary = refine_semantic(semantic, images, out, cfg, scfg)
    else:
        from refine.instances import run_refine

        summary = run_refine(ann, images, out, cfg, resume=resume, dump_prompts=dump_prompts)
    for line in summary.lines():
        typer.echo(line)
    exit_for_failures(len(summary.failed))


@refine_app.command("adapt")
def refine_adapt_cmd(
    ann: Annotated[Path, typer.Option("--ann", help="COCO JSON with coarse masks to adapt on.")],
    images: ImagesOpt,
    out: Annotated[Path, typer.Option("--out", help="Adapter file to write (.pt).")],
    prompts: RefinePromptsOpt = None,
    cebox_margin: Annotated[Optional[float], typer.Option("--cebox-margin", help="CEBox margin of the prompts (0 = off: official; paper 0.1).")] = None,
    strength: Annotated[Optional[float], typer.Option("--strength", help="Mask-prompt amplitude (official 30, paper 15).")] = None,
    reference: Annotated[Optional[str], typer.Option("--reference", help="Prompt rules: official (default) or paper.")] = None,
    rank: Annotated[Optional[int], typer.Option("--rank", help="LoRA rank (default 4).")] = None,
    margin: Annotated[Optional[float], typer.Option("--margin", help="Ranking-loss margin (default 0.02).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="SGD learning rate (default 0.01; /10 at steps 60 and 100).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Masks per SGD step (default 5).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Passes over the masks (default 1).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the LoRA init and the order.")] = None,
    embeddings: RefineEmbeddingsOpt = None,
    engine: EngineOpt = None,
    model: SamModelOpt = None,
    checkpoint: SamCheckpointOpt = None,
    precision: SamPrecisionOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
) -> None:
    """SAMRefiner++: train a rank-4 LoRA on SAM's IoU head to rank outputs like the coarse masks."""
    from pseudolabel.core.config import load_config_file, resolve
    from pseudolabel.core.io import check_output_file
    from refine.adapt import AdaptConfig, adapt_coco
    from refine.refiner import RefineConfig

    check_output_file(out, "--out", inputs=(ann,))

    file_refine, file_adapt = split_file_values(load_config_file(config), RefineConfig, AdaptConfig)
    cfg = resolve(RefineConfig(), file_refine, reference=reference, prompts=prompts, cebox_margin=cebox_margin,
                  strength=strength, embeddings=embeddings, engine=engine, model=model, checkpoint=checkpoint,
                  precision=precision, device=device)
    acfg = resolve(AdaptConfig(), file_adapt, rank=rank, alpha=None if rank is None else float(rank),
                   margin=margin, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed)
    summary = adapt_coco(ann, images, out, cfg, acfg)
    for line in summary.lines():
        typer.echo(line)
    exit_for_failures(len(summary.failed))


@commands.command("corrupt")
def corrupt_cmd(
    gt: Annotated[Path, typer.Option("--gt", help="Ground-truth COCO JSON with masks.")],
    out: Annotated[Path, typer.Option("--out", help="Coarse-mask COCO JSON to write.")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed (each mask's noise depends on seed and id only).")] = 0,
    severity: Annotated[float, typer.Option("--severity", help="Scales every defect (1.0 ≈ DAVIS-585: mean IoU ~0.8 on COCO).")] = 1.0,
    config: ConfigOpt = None,
) -> None:
    """Make DAVIS-585-style coarse masks from ground truth (jitter, blobs, holes, missing parts)."""
    from pseudolabel.core.config import load_config_file, resolve
    from pseudolabel.core.io import check_output_file
    from pseudolabel.testing.corrupt import CorruptConfig, corrupt_coco

    check_output_file(out, "--out", inputs=(gt,))
    cfg = resolve(CorruptConfig(), load_config_file(config), seed=seed, severity=severity)
    counts = corrupt_coco(gt, out, cfg)
    typer.echo(f"{counts['corrupted']} masks corrupted (seed {cfg.seed}, severity {cfg.severity}), "
               f"{counts['passed_through']} annotations passed through; written to {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(refine_app, name="refine")
    app.add_typer(commands)
