"""Progress bars and logging that do not tear them.

``progress`` wraps tqdm (every default can be changed with ``TQDM_*`` environment variables,
``TQDM_DISABLE=1`` turns bars off); ``logging_to_tqdm`` routes console log records through
``tqdm.write`` while a bar is open.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

T = TypeVar("T")

logger = logging.getLogger("sap")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (so a test's or a
    tool's redirection of stderr is followed, and a closed old stream is never used)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(verbose: bool = False) -> None:
    """Configure the ``sap`` logger once: INFO (DEBUG when ``verbose``) to stderr."""
    level = logging.DEBUG if verbose else logging.INFO
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[sap] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "img",
             disable: bool | None = None) -> tqdm:
    """A tqdm bar over ``iterable``; hidden for non-zero distributed ranks."""
    if disable is None:
        disable = int(os.environ.get("RANK", "0")) != 0 or None
    return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, disable=disable)


def logging_to_tqdm():
    """Context manager: log records of ``sap`` go through ``tqdm.write`` while it is open."""
    return logging_redirect_tqdm(loggers=[logger])
