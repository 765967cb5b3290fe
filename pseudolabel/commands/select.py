"""`sap select` (stage 2, SAPNet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import ConfigOpt, DeviceOpt, VerboseOpt, exit_for_failures


commands = typer.Typer()


@commands.command("select")
def select_cmd(
    ann: Annotated[Path, typer.Option("--ann", help="COCO JSON with a point per annotation.")],
    proposals: Annotated[Path, typer.Option("--proposals", help="sap proposals cache folder, or a SAPNet-format JSON.")],
    out: Annotated[Path, typer.Option("--out", help="Pseudo-label COCO JSON to write.")],
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of the images (mil, sapnet).")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="sapnet (default) | mil (PSM only) | sam-top1 (SAM's best, no training).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Training epochs (12).")] = None,
    backbone: Annotated[Optional[str], typer.Option("--backbone", help="resnet50 (default), resnet18, resnet34, resnet101, resnet18_half (the pocket backbone's).")] = None,
    backbone_weights: Annotated[Optional[str], typer.Option("--backbone-weights", help="imagenet (torchvision download, default) | pocket (bundled, pretrained on generated scenes; --backbone resnet18_half) | PATH to a ResNet state dict | none (random: tests only).")] = None,
    pdg: Annotated[Optional[bool], typer.Option("--pdg/--no-pdg", help="Point distance guidance in the stage-0 loss.")] = None,
    pnpg: Annotated[Optional[bool], typer.Option("--pnpg/--no-pnpg", help="Positive and negative proposal generation for stage 1.")] = None,
    bms: Annotated[Optional[bool], typer.Option("--bms/--no-bms", help="Box mining after each stage's top-1.")] = None,
    reference: Annotated[Optional[str], typer.Option("--reference", help="official (default: the official SAPNet code's rules, quirks included) | paper (the paper's rules) | sap (official with our rule_bms paper, rule_mining scored, rule_final scored: docs/selector.md); per-rule overrides (rule_bms, rule_ppg_box, rule_mps, rule_roi_align, rule_bn, rule_pdg_point, rule_neg_norm, rule_mining, rule_final) go in --config.")] = None,
    missing: Annotated[Optional[str], typer.Option("--missing", help="Points of unreadable images: fallback (SAM's top-1) | skip.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per step per process (4); the rate scales with the total batch.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate per 32 images (0.015, SAPNet's for ImageNet weights; 0.16 learned from random weights).")] = None,
    warmup_iters: Annotated[Optional[int], typer.Option("--warmup-iters", help="Iterations of linear warmup (500, SAPNet's for 12 COCO epochs); a run that spends over half its iterations in warmup is warned about.")] = None,
    min_size: Annotated[Optional[int], typer.Option("--min-size", help="Short side of the network input (800).")] = None,
    max_size: Annotated[Optional[int], typer.Option("--max-size", help="Long side limit of the network input (1333).")] = None,
    crops: Annotated[Optional[str], typer.Option("--crops", help="off (default: each image whole, resized) | auto (images the resize would shrink over 1.25x are cut into tiles of --min-size px around the points, P2BNet's way; docs/windows.md) | PIXELS (tiles of that side).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Data-loading processes, at most (2; fewer where the cores per process are fewer).")] = None,
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
    from pseudolabel.core.config import load_config_file, resolve
    from pseudolabel.selector import SelectConfig, run_select

    cfg = resolve(SelectConfig(), load_config_file(config), method=method, epochs=epochs, backbone=backbone,
                  backbone_weights=backbone_weights, pdg=pdg, pnpg=pnpg, bms=bms, reference=reference, missing=missing,
                  batch_size=batch_size, lr=lr, warmup_iters=warmup_iters, min_size=min_size, max_size=max_size, crops=crops,
                  workers=workers,
                  work_dir=work_dir, resume=resume, weights=weights, device=device, seed=seed)
    summary = run_select(ann, proposals, out, cfg, images=images)
    if summary.out is not None:  # rank 0
        typer.echo("\n".join(summary.lines()))
    # points left without a pseudo-mask (their image failed here or in sap proposals) count as failures
    exit_for_failures(len(summary.failed_images) + len(summary.no_proposals) + len(summary.skipped))


def register(app: typer.Typer) -> None:
    app.add_typer(commands)
