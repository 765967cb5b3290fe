"""Print the pytest node ids of the tests a JUnit XML report marks skipped, one per line.

Usage: python .ci/skipped_tests.py REPORT.xml — for .ci/run's second step, which runs exactly the
tests the fresh-clone step skipped. A report's ``classname`` is the test file's dotted path
(``tests.test_x``), followed by the class for a test in a class (``tests.test_x.TestY``).
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def node_id(classname: str, name: str, root: Path) -> str:
    """``tests.test_x.TestY`` + ``test_z[a]`` → ``tests/test_x.py::TestY::test_z[a]``."""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        file = Path(*parts[:cut]).with_suffix(".py")
        if (root / file).is_file():
            return "::".join([file.as_posix(), *parts[cut:], name])
    raise SystemExit(f"no test file for {classname} (test {name}) under {root}")


def skipped(report: Path, root: Path) -> list[str]:
    """The node ids of the skipped test cases in ``report``, in report order, each once."""
    ids = [node_id(case.get("classname", ""), case.get("name", ""), root)
           for case in ET.parse(report).getroot().iter("testcase") if case.find("skipped") is not None]
    return list(dict.fromkeys(ids))


if __name__ == "__main__":
    print("\n".join(skipped(Path(sys.argv[1]), Path.cwd())))
