"""The ``sap`` command line: assembles the command modules of :mod:`pseudolabel.commands`.

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

import typer

from pseudolabel.commands import MODULES

app = typer.Typer(
    name="sap",
    help="Point annotations → SAM proposals → SAPNet selection → SAMRefiner → SOLOv2.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
for _module in MODULES:
    _module.register(app)


def main() -> None:
    """Console entry point: run the app, turning :class:`SapError` into one sentence + exit 2."""
    from pseudolabel.core.errors import SapError
    from pseudolabel.core.progress import setup_logging

    setup_logging(verbose="--verbose" in sys.argv or "-v" in sys.argv)
    try:
        app()  # standalone: click prints usage errors and exits with their codes itself
    except SapError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:  # a file the user named cannot be read or written (disk full, permissions)
        where = f"{e.filename}: " if e.filename else ""
        typer.echo(f"error: {where}{e.strerror or e}", err=True)
        sys.exit(2)
    except Exception as e:  # one rank of a torchrun job lost its peers: a sentence, not a traceback
        from pseudolabel.core.device import peer_failure

        if (sentence := peer_failure(e)) is None:
            raise
        typer.echo(f"error: {sentence}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
