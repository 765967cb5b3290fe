"""Append-only JSON-lines journals (resume records, metrics) that survive a kill mid-line.

A process killed while appending leaves a torn last line. :func:`read_journal` returns every
record before it and, with ``repair``, cuts the file back to that point, so the next append
starts on a fresh line instead of gluing a record onto the fragment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_journal(path: str | os.PathLike, repair: bool = False) -> list[Any]:
    """The records of the complete, valid lines of ``path`` up to the first bad one ([] if absent).

    A line counts only when it ends in a newline and parses as JSON; everything from the first
    line that does not is dropped (with ``repair``: truncated from the file).
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    records: list[Any] = []
    good = 0
    while good < len(data):
        end = data.find(b"\n", good)
        if end < 0:
            break
        line = data[good:end].strip()
        if line:
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
        good = end + 1
    if repair and good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return records


def append_record(f, record: Any, sync: bool = True) -> None:
    """Append one record as a JSON line to the open text file ``f`` and flush it (fsync if ``sync``)."""
    f.write(json.dumps(record) + "\n")
    f.flush()
    if sync:
        os.fsync(f.fileno())
