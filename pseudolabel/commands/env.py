"""`sap env`: versions, device, CUDA and the optional engines."""

from __future__ import annotations

import typer

commands = typer.Typer()


@commands.command("env")
def env_cmd() -> None:
    """Print versions, the device that would be used, CUDA, and which optional engines exist."""
    from pseudolabel.core.environment import environment_report

    typer.echo(environment_report())


def register(app: typer.Typer) -> None:
    app.add_typer(commands)
