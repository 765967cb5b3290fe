"""`sap points`: one point per object from a fully annotated COCO file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

commands = typer.Typer()


@commands.command("points")
def points_cmd(
    gt: Annotated[Path, typer.Option("--gt", help="Fully annotated COCO JSON (masks).")],
    out: Annotated[Path, typer.Option("--out", help="Point file to write (COCO JSON with 'point').")],
    mode: Annotated[str, typer.Option("--mode", help="center | qc (P2BNet quasi-centre) | uniform.")] = "center",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (qc, uniform).")] = 0,
) -> None:
    """Derive one point per object from a fully annotated COCO file (for benchmarks)."""
    from pseudolabel.core.coco import load_coco_json
    from pseudolabel.core.config import sidecar_path, write_run_config
    from pseudolabel.core.io import check_output_file, write_json_atomic
    from pseudolabel.core.points import derive_points

    check_output_file(out, "--out", inputs=(gt,))
    points, counts = derive_points(load_coco_json(gt), mode=mode, seed=seed, source=str(gt))
    write_json_atomic(out, points)
    write_run_config(sidecar_path(out), "points", {"gt": str(gt), "mode": mode, "seed": seed}, counts=counts)
    typer.echo(f"{counts['points']} points ({mode}) written to {out}; skipped {counts['crowd_skipped']} "
               f"crowd and {counts['empty_skipped']} empty annotations")


def register(app: typer.Typer) -> None:
    app.add_typer(commands)
