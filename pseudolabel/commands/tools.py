"""`sap eval` and `sap viz` (cross-stage tools)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import GtOpt, ImagesOpt, exit_for_failures


commands = typer.Typer()


@commands.command("eval")
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


viz_app = typer.Typer(help="Pictures: overlays, side-by-side stages, disagreement contact sheet, refine prompts.",
                      no_args_is_help=True, rich_markup_mode=None)
VizOutDirOpt = Annotated[Path, typer.Option("--out", help="Folder for the PNGs.")]
ImageIdOpt = Annotated[Optional[list[int]], typer.Option("--image-id", help="Only this image (repeatable).")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="At most this many images.")]
AlphaOpt = Annotated[float, typer.Option("--alpha", help="Fill opacity of the masks (0-1).")]


def _check_viz_numbers(alpha: float, **counts: int | None) -> None:
    from pseudolabel.core.config import check_range

    check_range(alpha, "--alpha", 0, 1)
    for name, value in counts.items():
        if value is not None:
            check_range(value, "--" + name.replace("_", "-"), 1, integer=True)


def _viz_summary(report, what: str, out: Path) -> None:
    for key, reason in report.failed.items():
        typer.echo(f"  failed {key}: {reason}", err=True)
    typer.echo(f"{len(report.written)} {what} written to {out}"
               + (f", {len(report.failed)} failed" if report.failed else ""))
    exit_for_failures(len(report.failed))


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
    from pseudolabel.core.coco import check_segmentations, load_coco_json
    from pseudolabel.core.io import check_output_dir
    from pseudolabel.viz import render_overlays

    _check_viz_numbers(alpha=alpha, limit=limit)
    check_output_dir(out, "--out", inputs=(ann, images))
    coco = load_coco_json(ann)
    check_segmentations(coco, str(ann))
    report = render_overlays(coco, images, out, image_ids=image_id, limit=limit,
                             alpha=alpha, labels=not no_labels)
    _viz_summary(report, "overlays", out)


@viz_app.command("prompts")
def viz_prompts_cmd(
    dump: Annotated[Path, typer.Option("--dump", help="JSON Lines from sap refine --dump-prompts.")],
    ann: Annotated[Path, typer.Option("--ann", help="COCO JSON whose masks are outlined (e.g. the coarse input).")],
    images: ImagesOpt,
    out: VizOutDirOpt,
    iteration: Annotated[int, typer.Option("--iteration", help="Which iteration's prompts (0-based).")] = 0,
    image_id: ImageIdOpt = None,
    limit: LimitOpt = None,
) -> None:
    """One PNG per image: the points (green +, red −), box and CEBox box that SAM was given.

    Example: sap viz prompts --dump prompts.jsonl --ann coarse.json --images coco/images --out viz/
    """
    from pseudolabel.core.coco import load_coco_json
    from pseudolabel.viz.prompts import render_prompts

    report = render_prompts(load_coco_json(ann), dump, images, out, iteration=iteration,
                            image_ids=image_id, limit=limit)
    _viz_summary(report, "prompt pictures", out)


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
    from pseudolabel.core.coco import check_segmentations, load_coco_json
    from pseudolabel.core.io import check_output_dir
    from pseudolabel.viz import render_side_by_side

    _check_viz_numbers(alpha=alpha, limit=limit, panel_width=panel_width)
    check_output_dir(out, "--out", inputs=(images, proposals, selected, refined, gt))
    bags = None
    if proposals is not None:
        from pseudolabel.core.bag_sources import load_bags

        bags = load_bags(proposals)
    files = {k: (load_coco_json(p) if p is not None else None)
             for k, p in (("selected", selected), ("refined", refined), ("gt", gt))}
    for path, coco in zip((selected, refined, gt), files.values()):
        if coco is not None:
            check_segmentations(coco, str(path))
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
    from pseudolabel.core.coco import check_segmentations, load_coco_json
    from pseudolabel.core.io import check_output_file
    from pseudolabel.viz import render_disagreement_sheet

    _check_viz_numbers(alpha=alpha, n=n, cols=cols)
    check_output_file(out, "--out", inputs=(a, b, images))
    names = tuple(name or []) + (a.stem, b.stem)[len(name or []):]
    coco_a, coco_b = load_coco_json(a), load_coco_json(b)
    check_segmentations(coco_a, str(a))
    check_segmentations(coco_b, str(b))
    path, rows, report = render_disagreement_sheet(coco_a, coco_b, images, out,
                                                   n=n, names=names[:2], cols=cols, alpha=alpha)
    for r in rows:
        typer.echo(f"  {r['file_name']}: mean IoU {r['mean_iou']:.3f} over {r['n']} objects")
    for key, reason in report.failed.items():
        typer.echo(f"  failed {key}: {reason}", err=True)
    typer.echo(f"contact sheet of {len(rows)} images written to {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(commands)
    app.add_typer(viz_app, name="viz")
