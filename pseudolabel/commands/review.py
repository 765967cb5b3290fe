"""`sap review`: rank annotations by how likely they are wrong, a page to review them."""

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


def register(app: typer.Typer) -> None:
    app.add_typer(commands)
