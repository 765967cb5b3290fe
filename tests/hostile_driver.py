"""Runs `sap` command lines in one process, one after another, for tests/test_hostile_input.py.

Usage: python tests/hostile_driver.py CASES.json — CASES is a list of ``{"name", "argv"}``. For
each case it prints one JSON line ``{"name", "rc", "stderr", "seconds"}`` as soon as the case ends
(so a hang shows which case hung: the parent holds the time limit), after a first line
``{"ready": true}`` once the heavy imports are done.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cli  # noqa: E402


def run_case(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    sys.argv = ["sap", *argv]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main()
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # an escaped exception is what the test must catch: its traceback
            import traceback

            traceback.print_exc(file=err)
            rc = 99
    return rc, err.getvalue()


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    # every stage's heavy imports (torch, cv2, pycocotools, the stage packages) before the clock starts
    import pseudolabel.pipeline  # noqa: F401
    import segtrain.predict  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for case in cases:
        t0 = time.perf_counter()
        rc, stderr = run_case(case["argv"])
        print(json.dumps({"name": case["name"], "rc": rc, "stderr": stderr,
                          "seconds": round(time.perf_counter() - t0, 3)}), flush=True)


if __name__ == "__main__":
    main()
