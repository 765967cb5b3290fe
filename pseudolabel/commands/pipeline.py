"""`sap pipeline`: every stage in one resumable run folder (orchestration)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import ConfigOpt, DeviceOpt, EngineOpt, SamCheckpointOpt, SamModelOpt

commands = typer.Typer()


@commands.command("pipeline")
def pipeline_cmd(
    config: ConfigOpt = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of the images.")] = None,
    points: Annotated[Optional[Path], typer.Option("--points", help="Point file (COCO JSON with a point per object).")] = None,
    gt: Annotated[Optional[Path], typer.Option("--gt", help="Full masks: derive points from them and measure every stage.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder.")] = None,
    engine: EngineOpt = None,
    model: SamModelOpt = None,
    checkpoint: SamCheckpointOpt = None,
    device: DeviceOpt = None,
    sets: Annotated[Optional[list[str]], typer.Option("--set", help="section.key=value, e.g. train.iters=2000 (repeatable).")] = None,
    start: Annotated[Optional[str], typer.Option("--from", help="First stage to run.")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Last stage to run.")] = None,
) -> None:
    """Run points → proposals → select → refine → train → eval → viz in one resumable run folder."""
    from pseudolabel.pipeline import Pipeline, closing_table, load_pipeline_config, write_report

    cfg = load_pipeline_config(config, sets, images=str(images) if images else None,
                               points=str(points) if points else None, gt=str(gt) if gt else None,
                               out=str(out) if out else None, engine=engine, model=model, checkpoint=checkpoint,
                               device=device)
    records = Pipeline(cfg).run_stages(start, until)
    report = write_report(Path(cfg.out), records)
    typer.echo(closing_table(records))
    typer.echo(f"report: {report}")


def register(app: typer.Typer) -> None:
    app.add_typer(commands)
