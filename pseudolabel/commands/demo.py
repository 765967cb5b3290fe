"""`sap demo`: the whole pipeline on a shapes dataset it makes itself (orchestration)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import DeviceOpt, SamModelOpt

commands = typer.Typer()


@commands.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run folder.")] = Path("sap_runs/demo"),
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", help="SAM checkpoint file; it always wins ('none' = random tiny SAM). Without it: the official checkpoint if here or downloadable, else the pocket SAM trained on synthetic shapes (not SAM).")] = None,
    engine: Annotated[Optional[str], typer.Option("--engine", help="Engine of the checkpoint (default sam_vit_b).")] = None,
    model: SamModelOpt = None,
    device: DeviceOpt = None,
    offline: Annotated[bool, typer.Option("--offline", help="Do not try to download a SAM checkpoint.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="A token amount of work per stage (4 images, 1 selector epoch, 6 SOLOv2 iterations): checks an install in about a minute.")] = False,
) -> None:
    """The whole pipeline on a small shapes dataset it makes itself (real SAM if available)."""
    from pseudolabel.core.engines.registry import engine_option
    from pseudolabel.pipeline import closing_table, run_demo

    records, report = run_demo(out, checkpoint, engine_option(engine, model) or "sam_vit_b", device, offline,
                               quick=quick)
    typer.echo(closing_table(records))
    typer.echo(f"report: {report}")
    typer.echo(f"overlays: {Path(out) / 'run' / '7_viz'}")


def register(app: typer.Typer) -> None:
    app.add_typer(commands)
