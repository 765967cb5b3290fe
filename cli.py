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

# ---- refine (refine) -------------------------------------------------------------------------

# ---- train / predict (segtrain) --------------------------------------------------------------

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


def main() -> None:
    """Console entry point: run the app, turning :class:`SapError` into one sentence + exit 2."""
    from pseudolabel.errors import SapError
    from pseudolabel.progress import setup_logging

    setup_logging(verbose="--verbose" in sys.argv or "-v" in sys.argv)
    try:
        # standalone_mode=False: click returns the code of a typer.Exit instead of exiting
        rc = app(standalone_mode=False)
    except SapError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
