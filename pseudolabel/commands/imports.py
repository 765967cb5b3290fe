"""`sap import`: reviewed masks back as locked annotations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

commands = typer.Typer()


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
