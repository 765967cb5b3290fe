"""The ``sap`` command line: a thin layer over the library functions of each stage.

    sap env
    sap points --gt GT.json --out POINTS.json --mode qc
    sap proposals --ann POINTS.json --images DIR --out CACHE_DIR
    sap select --ann POINTS.json --images DIR --proposals CACHE_DIR --out PSEUDO.json
    sap refine --ann PSEUDO.json --images DIR --out REFINED.json
    sap train --train REFINED.json --images DIR --out RUN_DIR
    sap eval --gt GT.json --pseudo REFINED.json
    sap demo

Every command exits with status 2 and one sentence for input it cannot use, and with status 1
when it finished but some images failed (they are listed in its output).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="sap",
    help="Point annotations → SAM proposals → SAPNet selection → SAMRefiner → SOLOv2.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Option types shared by several commands.
ImagesOpt = Annotated[Path, typer.Option("--images", help="Folder of the images named in the JSON.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: best available).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML file of option values (flags override it).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


def _exit_for_failures(n_failed: int) -> None:
    if n_failed:
        raise typer.Exit(code=1)


@app.command("env")
def env_cmd() -> None:
    """Print versions, the device that would be used, CUDA, and which optional engines exist."""
    from pseudolabel.environment import environment_report

    typer.echo(environment_report())


# ---- points / proposals (pseudolabel) -------------------------------------------------------

@app.command("points")
def points_cmd(
    gt: Annotated[Path, typer.Option("--gt", help="Fully annotated COCO JSON (masks).")],
    out: Annotated[Path, typer.Option("--out", help="Point file to write (COCO JSON with 'point').")],
    mode: Annotated[str, typer.Option("--mode", help="center | qc (P2BNet quasi-centre) | uniform.")] = "center",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (qc, uniform).")] = 0,
) -> None:
    """Derive one point per object from a fully annotated COCO file (for benchmarks)."""
    from pseudolabel.coco import load_coco_json
    from pseudolabel.config import sidecar_path, write_run_config
    from pseudolabel.io import write_json_atomic
    from pseudolabel.points import derive_points

    points, counts = derive_points(load_coco_json(gt), mode=mode, seed=seed)
    write_json_atomic(out, points)
    write_run_config(sidecar_path(out), "points", {"gt": str(gt), "mode": mode, "seed": seed}, counts=counts)
    typer.echo(f"{counts['points']} points ({mode}) written to {out}; skipped {counts['crowd_skipped']} "
               f"crowd and {counts['empty_skipped']} empty annotations")


proposals_app = typer.Typer(help="Cache SAM multi-mask proposals for every annotated point.",
                            invoke_without_command=True, no_args_is_help=False)
app.add_typer(proposals_app, name="proposals")


@proposals_app.callback()
def proposals_cmd(
    ctx: typer.Context,
    ann: Annotated[Optional[Path], typer.Option("--ann", help="COCO JSON with a point per annotation.")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of the images.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Cache folder (created).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="SAM type: vit_h, vit_l, vit_b, tiny.")] = None,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", help="SAM .pth file; 'none' = random weights (tests only); default: download the official one.")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help="auto | fp32 | bf16 | fp16.")] = None,
    device: DeviceOpt = None,
    prompts: Annotated[Optional[str], typer.Option("--prompts", help="Prompt kinds, comma-separated: point, point_box (point,point_box = SAPNet's 6-proposal bags).")] = None,
    points_per_batch: Annotated[Optional[int], typer.Option("--points-per-batch", help="Prompts per decoder call (0 = auto).")] = None,
    save_embeddings: Annotated[Optional[bool], typer.Option("--save-embeddings/--no-save-embeddings", help="Also store each image embedding (fp16) for sap refine.")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="i/n: process every n-th image from the i-th (default: torchrun RANK/WORLD_SIZE).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a cache made with another configuration.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Cache SAM multi-mask proposals for every annotated point (resumable, sharded)."""
    if ctx.invoked_subcommand is not None:
        return
    from pseudolabel.config import load_config_file, resolve
    from pseudolabel.errors import InputError
    from pseudolabel.proposals import ProposalConfig, run_proposals

    if ann is None or images is None or out is None:
        raise InputError("sap proposals needs --ann, --images and --out (see sap proposals --help)")
    cfg = resolve(ProposalConfig(), load_config_file(config), model=model, checkpoint=checkpoint,
                  precision=precision, device=device, prompts=prompts, points_per_batch=points_per_batch,
                  save_embeddings=save_embeddings, shard=shard)
    summary = run_proposals(ann, images, out, cfg, overwrite=overwrite)
    for line in summary.lines():
        typer.echo(line)
    _exit_for_failures(len(summary.failed))


@proposals_app.command("export")
def proposals_export_cmd(
    cache: Annotated[Path, typer.Argument(help="Cache folder of sap proposals.")],
    out: Annotated[Path, typer.Option("--out", help="JSON file to write.")],
    format: Annotated[str, typer.Option("--format", help="sapnet (the official SAPNet training format).")] = "sapnet",
    ann: Annotated[Optional[Path], typer.Option("--ann", help="The point file (for image and category entries).")] = None,
) -> None:
    """Export a proposal cache to the official SAPNet training format."""
    from pseudolabel.errors import InputError
    from pseudolabel.io import write_json_atomic
    from pseudolabel.sapnet_format import export_sapnet

    if format != "sapnet":
        raise InputError(f"unknown export format {format!r}; the only one is 'sapnet'")
    data = export_sapnet(cache, ann)
    write_json_atomic(out, data)
    typer.echo(f"{len(data['annotations'])} proposal bags written to {out}")


@proposals_app.command("info")
def proposals_info_cmd(cache: Annotated[Path, typer.Argument(help="Cache folder of sap proposals.")]) -> None:
    """Summarise a proposal cache: configuration, images done and failed, proposals."""
    import json

    from pseudolabel.proposals import cache_overview

    typer.echo(json.dumps(cache_overview(cache), indent=2))

# ---- select (pseudolabel.selector) -----------------------------------------------------------

@app.command("select")
def select_cmd(
    ann: Annotated[Path, typer.Option("--ann", help="COCO JSON with a point per annotation.")],
    proposals: Annotated[Path, typer.Option("--proposals", help="sap proposals cache folder, or a SAPNet-format JSON.")],
    out: Annotated[Path, typer.Option("--out", help="Pseudo-label COCO JSON to write.")],
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of the images (mil, sapnet).")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="sapnet (default) | mil (PSM only) | sam-top1 (SAM's best, no training).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Training epochs (12).")] = None,
    backbone: Annotated[Optional[str], typer.Option("--backbone", help="resnet50 (default), resnet18, resnet34, resnet101.")] = None,
    backbone_weights: Annotated[Optional[str], typer.Option("--backbone-weights", help="imagenet (torchvision download, default) | PATH to a ResNet state dict | none (random: tests only).")] = None,
    pdg: Annotated[Optional[bool], typer.Option("--pdg/--no-pdg", help="Point distance guidance in the stage-0 loss.")] = None,
    pnpg: Annotated[Optional[bool], typer.Option("--pnpg/--no-pnpg", help="Positive and negative proposal generation for stage 1.")] = None,
    bms: Annotated[Optional[bool], typer.Option("--bms/--no-bms", help="Box mining after each stage's top-1.")] = None,
    missing: Annotated[Optional[str], typer.Option("--missing", help="Points of unreadable images: fallback (SAM's top-1) | skip.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per step per process (4); lr = 0.015 × total / 32.")] = None,
    min_size: Annotated[Optional[int], typer.Option("--min-size", help="Short side of the network input (800).")] = None,
    max_size: Annotated[Optional[int], typer.Option("--max-size", help="Long side limit of the network input (1333).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Data-loading processes (2).")] = None,
    work_dir: Annotated[Optional[str], typer.Option("--work-dir", help="Checkpoint folder (default OUT.selector/).")] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume", help="Continue training from WORK_DIR/selector.pt.")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="A selector.pt to select with, without training.")] = None,
    device: DeviceOpt = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed (0).")] = None,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Choose one SAM proposal per point (SAPNet MIL selection) and write pseudo-masks as COCO JSON.

    Multi-GPU: torchrun --nproc_per_node N $(which sap) select ...
    """
    from pseudolabel.config import load_config_file, resolve
    from pseudolabel.selector import SelectConfig, run_select

    cfg = resolve(SelectConfig(), load_config_file(config), method=method, epochs=epochs, backbone=backbone,
                  backbone_weights=backbone_weights, pdg=pdg, pnpg=pnpg, bms=bms, missing=missing,
                  batch_size=batch_size, min_size=min_size, max_size=max_size, workers=workers,
                  work_dir=work_dir, resume=resume, weights=weights, device=device, seed=seed)
    summary = run_select(ann, proposals, out, cfg, images=images)
    if summary.out is not None:  # rank 0
        typer.echo(summary.text())
    _exit_for_failures(len(summary.failed_images))


# ---- refine (refine) -------------------------------------------------------------------------

refine_app = typer.Typer(help="SAMRefiner: refine coarse masks (COCO JSON or PNG label maps) with SAM.",
                         invoke_without_command=True, no_args_is_help=False)
app.add_typer(refine_app, name="refine")

SamModelOpt = Annotated[Optional[str], typer.Option("--model", help="SAM type: vit_h, vit_l, vit_b, tiny.")]
SamCheckpointOpt = Annotated[Optional[str], typer.Option("--checkpoint", help="SAM .pth file; 'none' = random weights (tests only); default: download the official one.")]
SamPrecisionOpt = Annotated[Optional[str], typer.Option("--precision", help="auto | fp32 | bf16 | fp16.")]
RefinePromptsOpt = Annotated[Optional[str], typer.Option("--prompts", help="Prompt kinds, comma-separated: point, box, mask (any subset: the paper's prompt ablation).")]
RefineEmbeddingsOpt = Annotated[Optional[str], typer.Option("--embeddings", help="Cache folder of `sap proposals --save-embeddings`: reuse its image embeddings.")]


def _split_file_values(values: dict, *dataclass_types) -> list[dict]:
    """Share one config file's values among several option dataclasses (unknown keys rejected)."""
    import dataclasses

    from pseudolabel.errors import InputError

    names = [{f.name for f in dataclasses.fields(t)} for t in dataclass_types]
    unknown = sorted(set(values) - set().union(*names))
    if unknown:
        raise InputError(f"unknown configuration option(s): {', '.join(unknown)}")
    return [{k: v for k, v in values.items() if k in n} for n in names]


@refine_app.callback()
def refine_cmd(
    ctx: typer.Context,
    ann: Annotated[Optional[Path], typer.Option("--ann", help="COCO JSON with coarse masks (RLE or polygons).")] = None,
    semantic: Annotated[Optional[Path], typer.Option("--semantic", help="Folder of PNG label maps to refine instead of --ann.")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of the images.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Refined COCO JSON (with --ann) or folder of PNGs (with --semantic).")] = None,
    iters: Annotated[Optional[int], typer.Option("--iters", help="Refinement iterations (default 5).")] = None,
    prompts: RefinePromptsOpt = None,
    negative_point: Annotated[Optional[bool], typer.Option("--negative-point/--no-negative-point", help="Add the distance-guided negative point (default on).")] = None,
    negative_fallback: Annotated[Optional[str], typer.Option("--negative-fallback", help="When a mask fills its box: omit (default) or origin (pixel (0,0), as the public code).")] = None,
    cebox_margin: Annotated[Optional[float], typer.Option("--cebox-margin", help="CEBox growth margin (paper 0.1, the default; 0 = off, the public code).")] = None,
    strength: Annotated[Optional[float], typer.Option("--strength", help="Mask-prompt amplitude (code 30, the default; paper 15).")] = None,
    gamma: Annotated[Optional[float], typer.Option("--gamma", help="Mask-prompt span (default 4).")] = None,
    grown_strength: Annotated[Optional[float], typer.Option("--grown-strength", help="Mask-prompt amplitude where CEBox grew the box (default 1).")] = None,
    multimask: Annotated[Optional[bool], typer.Option("--multimask/--single-mask", help="Keep the best of SAM's 3 outputs (default) or its single output.")] = None,
    adapter: Annotated[Optional[str], typer.Option("--adapter", help="SAMRefiner++ adapter from `sap refine adapt`.")] = None,
    embeddings: RefineEmbeddingsOpt = None,
    model: SamModelOpt = None,
    checkpoint: SamCheckpointOpt = None,
    precision: SamPrecisionOpt = None,
    device: DeviceOpt = None,
    chunk: Annotated[Optional[int], typer.Option("--chunk", help="Objects per decoder call (0 = 4 on a CPU, 64 on a GPU).")] = None,
    stm_mu: Annotated[Optional[float], typer.Option("--stm-mu", help="Split-then-merge threshold (semantic; default 0.5).")] = None,
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", help="Semantic: labels 0..N-1 are classes; others (but the ignore label) are an error.")] = None,
    ignore_label: Annotated[Optional[int], typer.Option("--ignore-label", help="Semantic: label left alone (default 255).")] = None,
    background: Annotated[Optional[int], typer.Option("--background", help="Semantic: background label, not refined (default 0).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Reuse OUT.partial.jsonl of an interrupted run with the same input and settings.")] = True,
    config: ConfigOpt = None,
) -> None:
    """Refine coarse masks with SAMRefiner (distance-guided points, CEBox, Gaussian mask prompt)."""
    if ctx.invoked_subcommand is not None:
        return
    from pseudolabel.config import load_config_file, resolve
    from pseudolabel.errors import InputError
    from refine.refiner import RefineConfig
    from refine.semantic import SemanticConfig

    if (ann is None) == (semantic is None) or images is None or out is None:
        raise InputError("sap refine needs either --ann or --semantic, and --images and --out "
                         "(see sap refine --help)")
    file_refine, file_sem = _split_file_values(load_config_file(config), RefineConfig, SemanticConfig)
    cfg = resolve(RefineConfig(), file_refine, iters=iters, prompts=prompts, negative_point=negative_point,
                  negative_fallback=negative_fallback, cebox_margin=cebox_margin, strength=strength,
                  gamma=gamma, grown_strength=grown_strength, multimask=multimask, adapter=adapter,
                  embeddings=embeddings, model=model, checkpoint=checkpoint, precision=precision,
                  device=device, chunk=chunk)
    if semantic is not None:
        from refine.semantic import refine_semantic

        if embeddings is not None:
            raise InputError("--embeddings works with --ann only (label maps have no image ids)")
        scfg = resolve(SemanticConfig(), file_sem, stm_mu=stm_mu, num_classes=num_classes,
                       ignore_label=ignore_label, background=background)
        summary = refine_semantic(semantic, images, out, cfg, scfg)
    else:
        from refine.instances import refine_coco

        summary = refine_coco(ann, images, out, cfg, resume=resume)
    for line in summary.lines():
        typer.echo(line)
    _exit_for_failures(len(summary.failed))


@refine_app.command("adapt")
def refine_adapt_cmd(
    ann: Annotated[Path, typer.Option("--ann", help="COCO JSON with coarse masks to adapt on.")],
    images: ImagesOpt,
    out: Annotated[Path, typer.Option("--out", help="Adapter file to write (.pt).")],
    prompts: RefinePromptsOpt = None,
    cebox_margin: Annotated[Optional[float], typer.Option("--cebox-margin", help="CEBox margin of the prompts (default 0.1).")] = None,
    strength: Annotated[Optional[float], typer.Option("--strength", help="Mask-prompt amplitude (default 30).")] = None,
    rank: Annotated[Optional[int], typer.Option("--rank", help="LoRA rank (default 4).")] = None,
    margin: Annotated[Optional[float], typer.Option("--margin", help="Ranking-loss margin (default 0.02).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="SGD learning rate (default 0.01; /10 at steps 60 and 100).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Masks per SGD step (default 5).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Passes over the masks (default 1).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the LoRA init and the order.")] = None,
    embeddings: RefineEmbeddingsOpt = None,
    model: SamModelOpt = None,
    checkpoint: SamCheckpointOpt = None,
    precision: SamPrecisionOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
) -> None:
    """SAMRefiner++: train a rank-4 LoRA on SAM's IoU head to rank outputs like the coarse masks."""
    from pseudolabel.config import load_config_file, resolve
    from refine.adapt import AdaptConfig, adapt_coco
    from refine.refiner import RefineConfig

    file_refine, file_adapt = _split_file_values(load_config_file(config), RefineConfig, AdaptConfig)
    cfg = resolve(RefineConfig(), file_refine, prompts=prompts, cebox_margin=cebox_margin, strength=strength,
                  embeddings=embeddings, model=model, checkpoint=checkpoint, precision=precision, device=device)
    acfg = resolve(AdaptConfig(), file_adapt, rank=rank, alpha=None if rank is None else float(rank),
                   margin=margin, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed)
    summary = adapt_coco(ann, images, out, cfg, acfg)
    for line in summary.lines():
        typer.echo(line)
    _exit_for_failures(len(summary.failed))


@app.command("corrupt")
def corrupt_cmd(
    gt: Annotated[Path, typer.Option("--gt", help="Ground-truth COCO JSON with masks.")],
    out: Annotated[Path, typer.Option("--out", help="Coarse-mask COCO JSON to write.")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed (each mask's noise depends on seed and id only).")] = 0,
    severity: Annotated[float, typer.Option("--severity", help="Scales every defect (1.0 ≈ DAVIS-585: mean IoU ~0.8 on COCO).")] = 1.0,
    config: ConfigOpt = None,
) -> None:
    """Make DAVIS-585-style coarse masks from ground truth (jitter, blobs, holes, missing parts)."""
    from pseudolabel.config import load_config_file, resolve
    from refine.corrupt import CorruptConfig, corrupt_coco

    cfg = resolve(CorruptConfig(), load_config_file(config), seed=seed, severity=severity)
    counts = corrupt_coco(gt, out, cfg)
    typer.echo(f"{counts['corrupted']} masks corrupted (seed {cfg.seed}, severity {cfg.severity}), "
               f"{counts['passed_through']} annotations passed through; written to {out}")

# ---- train / predict (segtrain) --------------------------------------------------------------

@app.command("train")
def train_cmd(
    train: Annotated[Path, typer.Option("--train", help="Pseudo-label COCO JSON (RLE masks; 'alternatives' feed the MPS loss).")],
    images: ImagesOpt,
    out: Annotated[Path, typer.Option("--out", help="Run folder: config, metrics.jsonl, checkpoints, model_final.pth.")],
    val: Annotated[Optional[Path], typer.Option("--val", help="Validation COCO JSON with masks (mask AP).")] = None,
    val_images: Annotated[Optional[Path], typer.Option("--val-images", help="Folder of the validation images.")] = None,
    engine: Annotated[Optional[str], typer.Option("--engine", help="torch (default, runs anywhere) | detectron2.")] = None,
    backbone: Annotated[Optional[str], typer.Option("--backbone", help="resnet50 (default), resnet18, resnet34, resnet101.")] = None,
    backbone_weights: Annotated[Optional[str], typer.Option("--backbone-weights", help="imagenet (torchvision download, default) | PATH to a ResNet state dict | none (random).")] = None,
    schedule: Annotated[Optional[str], typer.Option("--schedule", help="1x (90k iterations at batch 16, default) | 3x.")] = None,
    iters: Annotated[Optional[int], typer.Option("--iters", help="Length of the run (the schedule's lr steps scale with it).")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", help="Images per iteration over all processes (16); lr = base lr × batch / 16.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Base learning rate at 16 images per batch (0.01).")] = None,
    min_size: Annotated[Optional[str], typer.Option("--min-size", help="Training short side: 640-800 (step 32, default), a list 640,800, or one size.")] = None,
    max_size: Annotated[Optional[int], typer.Option("--max-size", help="Long side limit (1333).")] = None,
    test_size: Annotated[Optional[int], typer.Option("--test-size", help="Evaluation short side (default: the largest --min-size).")] = None,
    mps_weight: Annotated[Optional[float], typer.Option("--mps-weight", help="Multi-mask auxiliary dice weight (0.25; 0 = off).")] = None,
    eval_period: Annotated[Optional[int], typer.Option("--eval-period", help="Evaluate on --val every N iterations (0 = at the end only).")] = None,
    checkpoint_period: Annotated[Optional[int], typer.Option("--checkpoint-period", help="Save a checkpoint every N iterations (5000).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Data-loading processes per training process (4).")] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision on GPU (default on).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed (0).")] = None,
    skip_missing_images: Annotated[Optional[bool], typer.Option("--skip-missing-images", help="Train without images missing from disk instead of stopping.")] = None,
    num_gpus: Annotated[Optional[int], typer.Option("--num-gpus", help="detectron2 engine: GPUs per machine (torch engine: use torchrun).")] = None,
    num_machines: Annotated[Optional[int], typer.Option("--num-machines", help="detectron2 engine: number of machines.")] = None,
    machine_rank: Annotated[Optional[int], typer.Option("--machine-rank", help="detectron2 engine: rank of this machine.")] = None,
    dist_url: Annotated[Optional[str], typer.Option("--dist-url", help="detectron2 engine: tcp://HOST:PORT of machine 0.")] = None,
    device: DeviceOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint (same configuration).")] = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Train SOLOv2 on pseudo-labels (COCO JSON with RLE masks).

    Several GPUs or machines (torch engine): torchrun --nproc_per_node N $(which sap) train ...
    """
    from pseudolabel.config import load_config_file, resolve
    from segtrain.engine import TrainConfig, train as run_train

    cfg = resolve(TrainConfig(), load_config_file(config), train=str(train), images=str(images), out=str(out),
                  val=str(val) if val else None, val_images=str(val_images) if val_images else None,
                  engine=engine, backbone=backbone, backbone_weights=backbone_weights, schedule=schedule,
                  iters=iters, batch=batch, base_lr=lr, min_size=min_size, max_size=max_size, test_size=test_size,
                  mps_weight=mps_weight, eval_period=eval_period, checkpoint_period=checkpoint_period,
                  workers=workers, amp=amp, seed=seed, skip_missing_images=skip_missing_images,
                  num_gpus=num_gpus, num_machines=num_machines, machine_rank=machine_rank, dist_url=dist_url,
                  device=device)
    summary = run_train(cfg, resume=resume)
    if summary is not None:
        typer.echo(summary.text())
        _exit_for_failures(len(summary.failed_images))


@app.command("predict")
def predict_cmd(
    weights: Annotated[Path, typer.Option("--weights", help="RUN_DIR/model_final.pth of sap train (or the run folder).")],
    images: ImagesOpt,
    out: Annotated[Path, typer.Option("--out", help="COCO results JSON to write (RLE, score, bbox from the mask).")],
    ann: Annotated[Optional[Path], typer.Option("--ann", help="COCO JSON naming the images (its ids are used); default: every image of the folder, ids 1..N.")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Images per forward pass.")] = 1,
    min_size: Annotated[Optional[int], typer.Option("--min-size", help="Test short side (default: that of training).")] = None,
    max_size: Annotated[Optional[int], typer.Option("--max-size", help="Long side limit (default: that of training).")] = None,
    score_thr: Annotated[Optional[float], typer.Option("--score-thr", help="Score threshold (0.1; the 0.05 after matrix NMS is lowered to it when smaller).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Data-loading processes.")] = 2,
    skip_missing_images: Annotated[bool, typer.Option("--skip-missing-images", help="Ignore images of --ann missing from disk.")] = False,
    device: DeviceOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Predict instance masks with a trained SOLOv2 and write COCO results."""
    from segtrain.predict import predict

    summary = predict(weights, images, out, ann=ann, device=device, batch=batch, workers=workers,
                      min_size=min_size, max_size=max_size, score_thr=score_thr,
                      skip_missing_images=skip_missing_images)
    typer.echo(f"{summary.text()}; wrote {out}")
    _exit_for_failures(len(summary.failed))


# ---- eval / corrupt / viz --------------------------------------------------------------------

GtOpt = Annotated[Path, typer.Option("--gt", help="Ground-truth COCO JSON with masks.")]


@app.command("eval")
def eval_cmd(
    gt: GtOpt,
    pseudo: Annotated[Optional[list[Path]], typer.Option(
        "--pseudo", help="Pseudo-label COCO JSON, matched to --gt by annotation id (repeat to compare).")] = None,
    pred: Annotated[Optional[list[Path]], typer.Option(
        "--pred", help="Model predictions (COCO results JSON) for mask AP (repeat to compare).")] = None,
    name: Annotated[Optional[list[str]], typer.Option(
        "--name", help="Column name per result, in order: every --pseudo, then every --pred.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the metrics here as JSON.")] = None,
    per_annotation: Annotated[bool, typer.Option(
        "--per-annotation", help="Keep every annotation's IoUs in the JSON.")] = False,
    no_boundary: Annotated[bool, typer.Option(
        "--no-boundary", help="Skip boundary IoU (faster: no mask decoding).")] = False,
) -> None:
    """Measure pseudo-labels (mask/box/boundary mIoU by annotation id) or predictions (mask AP).

    \b
    Examples:
        sap eval --gt gt.json --pseudo refined.json --out metrics.json
        sap eval --gt gt.json --pseudo top1.json --pseudo sapnet.json --name sam-top1 --name sapnet
        sap eval --gt val.json --pred predictions.json
    """
    from pseudolabel.evaluate import run_eval

    text, _ = run_eval(gt, pseudo or [], pred or [], names=name or [], out=out,
                       per_annotation=per_annotation, boundary=not no_boundary)
    typer.echo(text)
    if out is not None:
        typer.echo(f"metrics written to {out}")


viz_app = typer.Typer(help="Pictures: overlays, side-by-side stages, disagreement contact sheet.",
                      no_args_is_help=True, rich_markup_mode=None)
app.add_typer(viz_app, name="viz")
VizOutDirOpt = Annotated[Path, typer.Option("--out", help="Folder for the PNGs.")]
ImageIdOpt = Annotated[Optional[list[int]], typer.Option("--image-id", help="Only this image (repeatable).")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="At most this many images.")]
AlphaOpt = Annotated[float, typer.Option("--alpha", help="Fill opacity of the masks (0-1).")]


def _viz_summary(report, what: str, out: Path) -> None:
    for key, reason in report.failed.items():
        typer.echo(f"  failed {key}: {reason}", err=True)
    typer.echo(f"{len(report.written)} {what} written to {out}"
               + (f", {len(report.failed)} failed" if report.failed else ""))
    _exit_for_failures(len(report.failed))


@viz_app.command("overlay")
def viz_overlay_cmd(
    ann: Annotated[Path, typer.Option("--ann", help="COCO JSON to draw (masks, points, boxes).")],
    images: ImagesOpt,
    out: VizOutDirOpt,
    image_id: ImageIdOpt = None,
    limit: LimitOpt = None,
    alpha: AlphaOpt = 0.45,
    no_labels: Annotated[bool, typer.Option("--no-labels", help="Do not write category names.")] = False,
) -> None:
    """One PNG per image: every instance in its own colour with outline, point and category.

    Example: sap viz overlay --ann refined.json --images coco/images --out viz/ --limit 20
    """
    from pseudolabel.coco import load_coco_json
    from pseudolabel.viz import render_overlays

    report = render_overlays(load_coco_json(ann), images, out, image_ids=image_id, limit=limit,
                             alpha=alpha, labels=not no_labels)
    _viz_summary(report, "overlays", out)


@viz_app.command("compare")
def viz_compare_cmd(
    images: ImagesOpt,
    out: VizOutDirOpt,
    proposals: Annotated[Optional[Path], typer.Option(
        "--proposals", help="`sap proposals` cache folder (or SAPNet-format JSON).")] = None,
    selected: Annotated[Optional[Path], typer.Option("--selected", help="`sap select` output.")] = None,
    refined: Annotated[Optional[Path], typer.Option("--refined", help="`sap refine` output.")] = None,
    gt: Annotated[Optional[Path], typer.Option("--gt", help="Ground truth.")] = None,
    image_id: ImageIdOpt = None,
    ann_id: Annotated[Optional[list[int]], typer.Option(
        "--ann-id", help="Detail of one point instead: a panel per proposal (repeatable).")] = None,
    limit: LimitOpt = None,
    panel_width: Annotated[int, typer.Option("--panel-width", help="Width of each panel in pixels.")] = 640,
    alpha: AlphaOpt = 0.45,
) -> None:
    """Side by side for the same image: SAM proposals, selected, refined, ground truth.

    \b
    Examples:
        sap viz compare --images imgs --proposals cache --selected pseudo.json --refined refined.json --gt gt.json --out viz/
        sap viz compare --images imgs --proposals cache --selected pseudo.json --ann-id 42 --out viz/
    """
    from pseudolabel.coco import load_coco_json
    from pseudolabel.viz import render_side_by_side

    bags = None
    if proposals is not None:
        from pseudolabel.cache import load_bags

        bags = load_bags(proposals)
    files = {k: (load_coco_json(p) if p is not None else None)
             for k, p in (("selected", selected), ("refined", refined), ("gt", gt))}
    report = render_side_by_side(images, out, bags=bags, image_ids=image_id, ann_ids=ann_id,
                                 limit=limit, panel_width=panel_width, alpha=alpha, **files)
    _viz_summary(report, "pictures", out)


@viz_app.command("disagree")
def viz_disagree_cmd(
    a: Annotated[Path, typer.Argument(help="First COCO JSON with masks.")],
    b: Annotated[Path, typer.Argument(help="Second COCO JSON with masks (same annotation ids).")],
    images: ImagesOpt,
    out: Annotated[Path, typer.Option("--out", help="Contact sheet PNG to write.")],
    n: Annotated[int, typer.Option("--n", help="Number of images on the sheet.")] = 12,
    cols: Annotated[int, typer.Option("--cols", help="Tiles per row.")] = 2,
    name: Annotated[Optional[list[str]], typer.Option("--name", help="Titles of A and B (give twice).")] = None,
    alpha: AlphaOpt = 0.45,
) -> None:
    """Contact sheet of the N images where A and B disagree most (lowest mean IoU by annotation id).

    Example: sap viz disagree pseudo.json refined.json --images imgs --out worst.png --n 12
    """
    from pseudolabel.coco import load_coco_json
    from pseudolabel.viz import render_disagreement_sheet

    names = tuple(name or []) + (a.stem, b.stem)[len(name or []):]
    path, rows, report = render_disagreement_sheet(load_coco_json(a), load_coco_json(b), images, out,
                                                   n=n, names=names[:2], cols=cols, alpha=alpha)
    for r in rows:
        typer.echo(f"  {r['file_name']}: mean IoU {r['mean_iou']:.3f} over {r['n']} objects")
    for key, reason in report.failed.items():
        typer.echo(f"  failed {key}: {reason}", err=True)
    typer.echo(f"contact sheet of {len(rows)} images written to {path}")


# ---- demo / pipeline -------------------------------------------------------------------------

@app.command("pipeline")
def pipeline_cmd(
    config: ConfigOpt = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of the images.")] = None,
    points: Annotated[Optional[Path], typer.Option("--points", help="Point file (COCO JSON with a point per object).")] = None,
    gt: Annotated[Optional[Path], typer.Option("--gt", help="Full masks: derive points from them and measure every stage.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="SAM type.")] = None,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", help="SAM checkpoint ('none' = random).")] = None,
    device: DeviceOpt = None,
    sets: Annotated[Optional[list[str]], typer.Option("--set", help="section.key=value, e.g. train.iters=2000 (repeatable).")] = None,
    start: Annotated[Optional[str], typer.Option("--from", help="First stage to run.")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Last stage to run.")] = None,
) -> None:
    """Run points → proposals → select → refine → train → eval → viz in one resumable run folder."""
    from pseudolabel.pipeline import Pipeline, closing_table, load_pipeline_config, write_report

    cfg = load_pipeline_config(config, sets, images=str(images) if images else None,
                               points=str(points) if points else None, gt=str(gt) if gt else None,
                               out=str(out) if out else None, model=model, checkpoint=checkpoint, device=device)
    records = Pipeline(cfg).run_stages(start, until)
    report = write_report(Path(cfg.out), records)
    typer.echo(closing_table(records))
    typer.echo(f"report: {report}")


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run folder.")] = Path("sap_runs/demo"),
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", help="SAM checkpoint file ('none' = random tiny SAM).")] = None,
    model: Annotated[str, typer.Option("--model", help="SAM type of the checkpoint.")] = "vit_b",
    device: DeviceOpt = None,
    offline: Annotated[bool, typer.Option("--offline", help="Do not try to download a SAM checkpoint.")] = False,
) -> None:
    """The whole pipeline on a small shapes dataset it makes itself (real SAM if available)."""
    from pseudolabel.demo import run_demo
    from pseudolabel.pipeline import closing_table

    records, report = run_demo(out, checkpoint, model, device, offline)
    typer.echo(closing_table(records))
    typer.echo(f"report: {report}")
    typer.echo(f"overlays: {Path(out) / 'run' / '7_viz'}")


def main() -> None:
    """Console entry point: run the app, turning :class:`SapError` into one sentence + exit 2."""
    from pseudolabel.errors import SapError
    from pseudolabel.progress import setup_logging

    setup_logging(verbose="--verbose" in sys.argv or "-v" in sys.argv)
    try:
        app()  # standalone: click prints usage errors and exits with their codes itself
    except SapError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
