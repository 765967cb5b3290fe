"""Runs `sap` command lines in one process, one after another, for tests/test_hostile_input.py.

Usage: python tests/hostile_driver.py CASES.json — CASES is a list of ``{"name", "argv"}`` (and
``"full_disk": FOLDER`` for a case run as if the disk under FOLDER were full, see :func:`full_disk`). For
each case it prints one JSON line ``{"name", "rc", "stderr", "stdout", "seconds"}`` as soon as the case ends
(so a hang shows which case hung: the parent holds the time limit), after a first line
``{"ready": true}`` once the heavy imports are done.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cli  # noqa: E402


class _Full:
    """A file open for writing on a full disk: every write raises ENOSPC."""

    def __init__(self, f) -> None:
        self._f = f

    def write(self, *_args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writelines = write

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __iter__(self):
        return iter(self._f)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


@contextlib.contextmanager
def full_disk(folder: str):
    """Every write under ``folder`` fails as on a full disk: a file opened for writing there
    opens, and its first ``write`` raises ENOSPC (without a file name, as the OS says it),
    ``torch.save`` raises the RuntimeError it raises then, and SQLite finds no free page (its
    own "database or disk is full"). Reads and writes elsewhere work."""
    import torch

    root = os.path.realpath(folder)

    def under(path) -> bool:
        try:
            real = os.path.realpath(os.fspath(path))
        except TypeError:  # a file descriptor or a buffer
            return False
        return real == root or real.startswith(root + os.sep)

    real_open, real_save, real_connect = builtins.open, torch.save, sqlite3.connect

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _Full(f) if any(c in mode for c in "wax+") and under(file) else f

    def save(obj, f, *args, **kwargs):
        if under(f):
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: "
                               "PytorchStreamWriter failed writing file data/0: file write failed")
        return real_save(obj, f, *args, **kwargs)

    def connect(database, *args, **kwargs):
        conn = real_connect(database, *args, **kwargs)
        if under(database):
            conn.execute("PRAGMA max_page_count = 1")
        return conn

    builtins.open = io.open = open_
    torch.save, sqlite3.connect = save, connect
    try:
        yield
    finally:
        builtins.open = io.open = real_open
        torch.save, sqlite3.connect = real_save, real_connect


def run_case(argv: list[str], disk_full_under: str | None = None) -> tuple[int, str, str]:
    err, out = io.StringIO(), io.StringIO()
    sys.argv = ["sap", *argv]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), \
            (full_disk(disk_full_under) if disk_full_under else contextlib.nullcontext()):
        try:
            cli.main()
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # an escaped exception is what the test must catch: its traceback
            import traceback

            traceback.print_exc(file=err)
            rc = 99
    return rc, err.getvalue(), out.getvalue()


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    # every stage's heavy imports (torch, cv2, pycocotools, the stage packages) before the clock starts
    import pseudolabel.pipeline  # noqa: F401
    import segtrain.predict  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for case in cases:
        t0 = time.perf_counter()
        rc, stderr, stdout = run_case(case["argv"], case.get("full_disk"))
        print(json.dumps({"name": case["name"], "rc": rc, "stderr": stderr, "stdout": stdout[-4000:],
                          "seconds": round(time.perf_counter() - t0, 3)}), flush=True)


if __name__ == "__main__":
    main()
