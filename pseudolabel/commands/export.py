"""`sap export`: a COCO result to a labelling tool (Label Studio, CVAT, FiftyOne, YOLO-seg, COCO polygons)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

commands = typer.Typer()


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


def register(app: typer.Typer) -> None:
    app.add_typer(commands)
