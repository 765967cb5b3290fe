"""Closing the loop with people (a cross-stage tool): the review queue and corrections back in.

:mod:`.signals` (how likely each pseudo-label is wrong, signal by signal, and one risk),
:mod:`.queue` (the ranked items, ``worst.json``, the measure against ground truth),
:mod:`.page` and :mod:`.template` (the static HTML page with thumbnails), :mod:`.run`
(``sap review``), :mod:`.corrections` (``sap import``), :mod:`.runfiles` (what a pipeline run
folder holds).
"""

from .corrections import SOURCES, ImportSummary, import_corrections
from .queue import build_queue, share_of_bad_in_top
from .run import ReviewSummary, run_review
from .signals import SIGNALS, WEIGHTS, Context, combine, evidence

__all__ = ["Context", "ImportSummary", "ReviewSummary", "SIGNALS", "SOURCES", "WEIGHTS", "build_queue", "combine", "evidence",
           "import_corrections", "run_review", "share_of_bad_in_top"]
