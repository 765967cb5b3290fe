"""`sap points`: the point file, read from a labelling tool's export or derived from full masks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

commands = typer.Typer()


@commands.command("points")
def points_cmd(
    out: Annotated[Path, typer.Option("--out", help="Point file to write (COCO JSON with 'point', and 'point_coords'/'point_labels' for several clicks).")],
    gt: Annotated[Optional[Path], typer.Option("--gt", help="Fully annotated COCO JSON (masks): derive one point per object.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--from", help="Read a labelling tool's export: labelstudio | cvat | labelme | pointsup | p2bnet | coco-keypoints.")] = None,
    source: Annotated[Optional[Path], typer.Option("--in", help="The export (a file; for labelme a file or a folder of them).")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of the images (the export's image names are matched by file name).")] = None,
    categories: Annotated[Optional[Path], typer.Option("--categories", help="YAML name → id, or a COCO categories list (default: the export's own categories).")] = None,
    annotator: Annotated[Optional[str], typer.Option("--annotator", help="Label Studio: read this annotator's annotation (user id or e-mail), not the newest.")] = None,
    keypoint: Annotated[Optional[str], typer.Option("--keypoint", help="coco-keypoints: the keypoint that marks each object (default: the first visible one).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="With --gt: center | qc (P2BNet quasi-centre) | uniform.")] = "center",
    seed: Annotated[int, typer.Option("--seed", help="With --gt: random seed (qc, uniform).")] = 0,
) -> None:
    """Write the point file: read it from a labelling tool's export (--from), or derive one point
    per object from full masks (--gt, for benchmarks)."""
    from pseudolabel.core.config import SEED_MAX, check_range, sidecar_path, write_run_config
    from pseudolabel.core.errors import InputError
    from pseudolabel.core.io import check_output_file, write_json_atomic

    if (gt is None) == (fmt is None):
        raise InputError("sap points needs either --gt GT.json or --from FORMAT --in EXPORT --images DIR")
    if fmt is not None:
        from pseudolabel.ingest import IngestOptions, read_points

        if source is None or images is None:
            raise InputError(f"sap points --from {fmt} needs --in (the export) and --images (the image folder)")
        check_output_file(out, "--out", inputs=(source,))
        options = IngestOptions(str(categories) if categories else None, annotator, keypoint)
        points, counts = read_points(fmt, source, images, options)
        write_json_atomic(out, points)
        write_run_config(sidecar_path(out), "points", {"from": fmt, "in": str(source), "images": str(images),
                                                       **options.__dict__}, counts=counts)
        extra = "".join(f", {v} {k.replace('_', ' ')}" for k, v in counts.items()
                        if k not in ("images", "objects", "clicks", "negative_clicks") and v)
        typer.echo(f"{counts['objects']} objects ({counts['clicks']} clicks, {counts['negative_clicks']} negative) "
                   f"on {counts['images']} images read from {fmt} export {source}{extra}; written to {out}")
        return
    from pseudolabel.core.coco import load_coco_json
    from pseudolabel.core.points import derive_points

    check_range(seed, "--seed", 0, SEED_MAX, integer=True)
    check_output_file(out, "--out", inputs=(gt,))
    points, counts = derive_points(load_coco_json(gt), mode=mode, seed=seed, source=str(gt))
    write_json_atomic(out, points)
    write_run_config(sidecar_path(out), "points", {"gt": str(gt), "mode": mode, "seed": seed}, counts=counts)
    typer.echo(f"{counts['points']} points ({mode}) written to {out}; skipped {counts['crowd_skipped']} "
               f"crowd and {counts['empty_skipped']} empty annotations")


def register(app: typer.Typer) -> None:
    app.add_typer(commands)
