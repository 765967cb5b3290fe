"""`sap review`, `sap export`, `sap import`: the loop with people (review queue, labelling tools)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import exit_for_failures

commands = typer.Typer()


@commands.command("review")
def review_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for the page (index.html), queue.json and worst.json.")],
    ann: Annotated[Optional[Path], typer.Option("--ann", help="COCO result to review (pseudo, refined, ...).")] = None,
    run: Annotated[Optional[Path], typer.Option("--run", help="A `sap pipeline` run folder instead of --ann (finds every file).")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of the images (default: the run's).")] = None,
    gt: Annotated[Optional[Path], typer.Option("--gt", help="Ground truth: shows IoU per item and measures the queue.")] = None,
    selected: Annotated[Optional[Path], typer.Option("--selected", help="`sap select` output before refine (refine's change).")] = None,
    sam_top1: Annotated[Optional[Path], typer.Option("--sam-top1", help="SAM's top-1 choice (disagreement with the selection).")] = None,
    proposals: Annotated[Optional[Path], typer.Option("--proposals", help="Proposal cache (SAM's predicted IoU and stability).")] = None,
    pred: Annotated[Optional[Path], typer.Option("--pred", help="The trained model's predictions (disagreement).")] = None,
    n: Annotated[int, typer.Option("--n", help="How many of the worst go to worst.json.")] = 200,
    page_size: Annotated[int, typer.Option("--page-size", help="Thumbnails per page.")] = 120,
    no_thumbnails: Annotated[bool, typer.Option("--no-thumbnails", help="Skip the thumbnails (faster).")] = False,
) -> None:
    """Rank annotations by how likely they are wrong: a static page to review them, worst.json to export.

    \b
    Examples:
        sap review --run sap_runs/custom --out review/
        sap review --ann refined.json --images imgs --selected pseudo.json --proposals cache --out review/
    """
    from pseudolabel.review import run_review

    summary = run_review(out, ann=ann, run=run, images=images, gt=gt, selected=selected, sam_top1=sam_top1,
                         proposals=proposals, predictions=pred, n_worst=n, thumbnails=not no_thumbnails,
                         page_size=page_size)
    for line in summary.lines():
        typer.echo(line)
    exit_for_failures(len(summary.failed_images))


@commands.command("export")
def export_cmd(
    to: Annotated[str, typer.Option("--to", help="labelstudio | cvat | fiftyone | yolo-seg | coco-polygons")],
    ann: Annotated[Path, typer.Option("--ann", help="COCO file of ours: pseudo, refined, predictions, ground truth, worst.json.")],
    out: Annotated[str, typer.Option("--out", help="File (labelstudio, cvat, coco-polygons), folder (yolo-seg) or dataset name (fiftyone).")],
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of the images.")] = None,
    image_root: Annotated[Optional[str], typer.Option("--image-root", help="labelstudio: URL prefix of the images (default: its local-files URL).")] = None,
    polygons: Annotated[bool, typer.Option("--polygons", help="labelstudio: polygons instead of brush masks.")] = False,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Polygon simplification in pixels (0 = exact outline).")] = 1.0,
    min_iou: Annotated[float, typer.Option("--min-iou", help="Report polygons whose IoU with their mask is below this.")] = 0.9,
    field: Annotated[str, typer.Option("--field", help="fiftyone: label field of --ann.")] = "labels",
    gt: Annotated[Optional[Path], typer.Option("--gt", help="fiftyone: ground truth as another field.")] = None,
    pseudo: Annotated[Optional[Path], typer.Option("--pseudo", help="fiftyone: selected masks as another field.")] = None,
    refined: Annotated[Optional[Path], typer.Option("--refined", help="fiftyone: refined masks as another field.")] = None,
    pred: Annotated[Optional[Path], typer.Option("--pred", help="fiftyone: predictions as another field.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="fiftyone: replace a dataset of the same name.")] = False,
    launch: Annotated[bool, typer.Option("--launch", help="fiftyone: open the App on the dataset.")] = False,
) -> None:
    """Export a COCO result to a labelling tool, keeping ids and scores; lists what it could not represent.

    \b
    Examples:
        sap export --to labelstudio --ann review/worst.json --images imgs --out tasks.json
        sap export --to cvat --ann refined.json --out annotations.xml
        sap export --to fiftyone --ann refined.json --images imgs --gt gt.json --out my-run --launch
        sap export --to yolo-seg --ann refined.json --images imgs --out yolo/
    """
    from pseudolabel.export import run_export
    from pseudolabel.export.run import ExportOptions

    others = {k: str(v) for k, v in (("ground_truth", gt), ("pseudo", pseudo), ("refined", refined),
                                     ("predictions", pred)) if v is not None}
    opts = ExportOptions(image_root=image_root, polygons=polygons, tolerance=tolerance, min_iou=min_iou,
                         field=field, others=others, overwrite=overwrite)
    report = run_export(to, ann, images, out, opts)
    for line in report.lines():
        typer.echo(line)
    if launch and to == "fiftyone":
        from pseudolabel.export.fiftyone_dataset import launch as launch_app

        launch_app(out)


@commands.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="The reviewed file: Label Studio JSON export, CVAT 1.1 XML or COCO JSON.")],
    source: Annotated[str, typer.Option("--from", help="labelstudio | cvat | coco")],
    into: Annotated[Path, typer.Option("--into", help="A `sap pipeline` run folder, or a COCO file to update in place.")],
    keep_new: Annotated[bool, typer.Option("--keep-new", help="Also add objects drawn by the reviewer (new ids).")] = False,
) -> None:
    """Bring reviewed masks back as locked annotations: refine and the pipeline keep them, train uses them.

    \b
    Examples:
        sap import --from labelstudio export.json --into sap_runs/custom
        sap import --from cvat annotations.xml --into refined.json
    """
    from pseudolabel.review import import_corrections

    summary = import_corrections(source, file, into, keep_new=keep_new)
    for line in summary.lines():
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.add_typer(commands)
