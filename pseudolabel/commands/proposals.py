"""`sap proposals` (stage 1), `sap proposals export` and `sap proposals info`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import ConfigOpt, DeviceOpt, EngineOpt, SamCheckpointOpt, SamModelOpt, SamPrecisionOpt, exit_for_failures


proposals_app = typer.Typer(help="Cache multi-mask proposals (SAM, SAM 2.1, HQ-SAM) for every annotated point.",
                            invoke_without_command=True, no_args_is_help=False)


@proposals_app.callback()
def proposals_cmd(
    ctx: typer.Context,
    ann: Annotated[Optional[Path], typer.Option("--ann", help="COCO JSON with a point per annotation.")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of the images.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Cache folder (created).")] = None,
    engine: EngineOpt = None,
    model: SamModelOpt = None,
    checkpoint: SamCheckpointOpt = None,
    precision: SamPrecisionOpt = None,
    device: DeviceOpt = None,
    prompts: Annotated[Optional[str], typer.Option("--prompts", help="Prompt kinds, comma-separated: point, point_box (point,point_box = SAPNet's 6-proposal bags).")] = None,
    points_per_batch: Annotated[Optional[int], typer.Option("--points-per-batch", help="Prompts per decoder call (0 = auto).")] = None,
    save_embeddings: Annotated[Optional[bool], typer.Option("--save-embeddings/--no-save-embeddings", help="Also store each image embedding (fp16) for sap refine.")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="i/n: process every n-th image from the i-th (default: torchrun RANK/WORLD_SIZE).")] = None,
    encoder_batch: Annotated[Optional[int], typer.Option("--encoder-batch", help="Images per encoder call (0 = auto: 1 on a CPU, 8 on a GPU).")] = None,
    overlap: Annotated[Optional[bool], typer.Option("--overlap/--no-overlap", help="Read images ahead and RLE-encode masks on background threads (same cache either way).")] = None,
    windows: Annotated[Optional[str], typer.Option("--windows", help="auto | off | PIXELS: encode windows around the points of images far larger than the engine's frame (auto: beyond 1.25 frames; docs/windows.md).")] = None,
    window_scale: Annotated[Optional[float], typer.Option("--window-scale", help="Cut windows at this scale (1 = native pixels; 0.5 = windows twice the frame, halved).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a cache made with another configuration.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Cache multi-mask proposals for every annotated point (resumable, sharded)."""
    if ctx.invoked_subcommand is not None:
        return
    from pseudolabel.core.config import load_config_file, resolve
    from pseudolabel.core.errors import InputError
    from pseudolabel.proposals.run import ProposalConfig, run_proposals

    if ann is None or images is None or out is None:
        raise InputError("sap proposals needs --ann, --images and --out (see sap proposals --help)")
    cfg = resolve(ProposalConfig(), load_config_file(config), engine=engine, model=model, checkpoint=checkpoint,
                  precision=precision, device=device, prompts=prompts, points_per_batch=points_per_batch,
                  save_embeddings=save_embeddings, shard=shard, encoder_batch=encoder_batch, overlap=overlap,
                  windows=windows, window_scale=window_scale)
    summary = run_proposals(ann, images, out, cfg, overwrite=overwrite)
    for line in summary.lines():
        typer.echo(line)
    exit_for_failures(len(summary.failed))


@proposals_app.command("export")
def proposals_export_cmd(
    cache: Annotated[Path, typer.Argument(help="Cache folder of sap proposals.")],
    out: Annotated[Path, typer.Option("--out", help="JSON file to write.")],
    format: Annotated[str, typer.Option("--format", help="sapnet (the official SAPNet training format).")] = "sapnet",
    ann: Annotated[Optional[Path], typer.Option("--ann", help="The point file (for image and category entries).")] = None,
) -> None:
    """Export a proposal cache to the official SAPNet training format."""
    from pseudolabel.core.errors import InputError
    from pseudolabel.core.io import write_json_atomic
    from pseudolabel.core.sapnet_format import export_sapnet

    if format != "sapnet":
        raise InputError(f"unknown export format {format!r}; the only one is 'sapnet'")
    from pseudolabel.core.io import check_output_file

    check_output_file(out, "--out", inputs=(ann,))
    data = export_sapnet(cache, ann)
    write_json_atomic(out, data)
    typer.echo(f"{len(data['annotations'])} proposal bags written to {out}")


@proposals_app.command("info")
def proposals_info_cmd(cache: Annotated[Path, typer.Argument(help="Cache folder of sap proposals.")]) -> None:
    """Summarise a proposal cache: configuration, images done and failed, proposals."""
    import json

    from pseudolabel.proposals.run import cache_overview

    typer.echo(json.dumps(cache_overview(cache), indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(proposals_app, name="proposals")
