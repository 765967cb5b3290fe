""".ci/run's second step runs exactly the tests its fresh-clone step skipped: the node ids come
from step 1's JUnit report (.ci/skipped_tests.py), and step 1 is the README's command verbatim."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _skipped_tests():
    spec = importlib.util.spec_from_file_location("skipped_tests", REPO / ".ci" / "skipped_tests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_skipped_node_ids_are_read_back_from_the_junit_report(tmp_path):
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_ci_steps" name="test_a[x-1]"><skipped message="no d2"/></testcase>'
        '<testcase classname="tests.test_ci_steps" name="test_b"/>'
        '<testcase classname="tests.test_ci_steps.TestC" name="test_d"><skipped/></testcase>'
        '<testcase classname="tests.test_ci_steps" name="test_a[x-1]"><skipped/></testcase>'
        "</testsuite></testsuites>")
    assert _skipped_tests().skipped(report, REPO) == [
        "tests/test_ci_steps.py::test_a[x-1]", "tests/test_ci_steps.py::TestC::test_d"]


def test_ci_takes_the_readme_test_command_as_written():
    run = (REPO / ".ci" / "run").read_text()
    pattern = re.search(r"grep -m1 -E '([^']+)'", run).group(1)
    lines = [ln for ln in (REPO / "README.md").read_text().splitlines() if re.search(pattern, ln)]
    assert lines and "pytest" in lines[0] and "detectron2" not in lines[0]
    assert 'bash -euo pipefail -c "$README_TEST"' in run
