"""`sap train` and `sap predict` (stage 4, SOLOv2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import ConfigOpt, DeviceOpt, ImagesOpt, VerboseOpt, exit_for_failures


commands = typer.Typer()


@commands.command("train")
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
    workers: Annotated[Optional[int], typer.Option("--workers", help="Data-loading processes per training process, at most (4; fewer where its share of the cores is smaller).")] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision on GPU (default on).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed (0).")] = None,
    skip_missing_images: Annotated[Optional[bool], typer.Option("--skip-missing-images", help="Train without images missing from disk instead of stopping.")] = None,
    keep_empty_images: Annotated[Optional[bool], typer.Option("--keep-empty-images", help="Train on images without instances too (as negatives).")] = None,
    images_per_pass: Annotated[Optional[int], typer.Option("--images-per-pass", help="Images padded together in one forward pass (2, AdelaiDet's per GPU).")] = None,
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
    from pseudolabel.core.config import load_config_file, resolve
    from segtrain import TrainConfig, run_train

    cfg = resolve(TrainConfig(), load_config_file(config), train=str(train), images=str(images), out=str(out),
                  val=str(val) if val else None, val_images=str(val_images) if val_images else None,
                  engine=engine, backbone=backbone, backbone_weights=backbone_weights, schedule=schedule,
                  iters=iters, batch=batch, base_lr=lr, min_size=min_size, max_size=max_size, test_size=test_size,
                  mps_weight=mps_weight, eval_period=eval_period, checkpoint_period=checkpoint_period,
                  workers=workers, amp=amp, seed=seed, skip_missing_images=skip_missing_images,
                  keep_empty_images=keep_empty_images, images_per_pass=images_per_pass,
                  num_gpus=num_gpus, num_machines=num_machines, machine_rank=machine_rank, dist_url=dist_url,
                  device=device)
    summary = run_train(cfg, resume=resume)
    if summary is not None:
        typer.echo("\n".join(summary.lines()))
        exit_for_failures(len(summary.failed_images))


@commands.command("predict")
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
    typer.echo(f"{'; '.join(summary.lines())}; wrote {out}")
    exit_for_failures(len(summary.failed))


def register(app: typer.Typer) -> None:
    app.add_typer(commands)
