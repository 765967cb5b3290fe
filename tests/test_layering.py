"""The architecture, checked from the source: layers only import downward, stages never import each
other, no module imports itself back through others, and nothing optional loads on import.

Every ``import`` counts, including those inside functions (a lazy import hides a cycle from Python,
not from a reader). See docs/architecture.md for the picture.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pseudolabel", "refine", "segtrain")
MAX_LINES = 450  # one job per file: about 400 lines, never far more

#: module-name prefix → (layer, group). Layer 1 is the core, 2 the stages (a stage may import only
#: its own group and the core), 3 the cross-stage tools, 4 the orchestration. The longest prefix wins.
LAYERS: dict[str, tuple[int, str]] = {
    "pseudolabel": (0, "root"),
    "pseudolabel.core": (1, "core"),
    "pseudolabel.proposals": (2, "proposals"),
    "pseudolabel.selector": (2, "selector"),
    "refine": (2, "refine"),
    "segtrain": (2, "segtrain"),
    "pseudolabel.pocket": (2, "pocket"),  # the pocket SAM's scenes and training: core only
    "pseudolabel.evaluate": (3, "tools"),
    "pseudolabel.viz": (3, "tools"),
    "pseudolabel.export": (3, "tools"),
    "pseudolabel.review": (3, "tools"),
    "pseudolabel.ingest": (3, "tools"),  # labelling-tool exports → the canonical point file
    "pseudolabel.testing": (3, "tools"),  # data generators for tests and benchmarks: nothing imports it up
    "pseudolabel.pipeline": (4, "orchestration"),
    "pseudolabel.commands": (4, "orchestration"),
    "cli": (4, "orchestration"),
}

#: modules a product entry point reaches without a written import, each with the reason
LOADED_BY_NAME = {
    "pseudolabel.pocket": "the pocket SAM's and the pocket backbone's trainers: scripts/train_pocket_sam.py "
                          "and train_pocket_backbone.py make the weights the core loads by name (the engine "
                          "sam_pocket, --backbone-weights pocket)",
}

#: optional engines and heavy extras: importing the packages must not load them
OPTIONAL = ("detectron2", "sam2", "segment_anything_hq", "fiftyone", "label_studio_sdk", "label_studio_converter")


def module_files(root: Path = REPO) -> dict[str, Path]:
    """Dotted module name → file, for the three packages and ``cli.py``."""
    out = {"cli": root / "cli.py"}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The known modules that ``module`` imports anywhere in its file (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:  # ``pkg.mod.name`` → ``pkg.mod``
            target = target.rpartition(".")[0]
        if target and target != module:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node.level, node.module) if node.level else (node.module or "")
            for alias in node.names:  # ``from pkg import mod`` imports the module pkg.mod
                add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
    return found


def layer_of(module: str) -> tuple[int, str] | None:
    best = None
    for prefix in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best):
                best = prefix
    return LAYERS[best] if best is not None else None


def edge_violations(graph: dict[str, set[str]]) -> list[str]:
    """One sentence per import that breaks the layering (upward, or between two stages)."""
    problems = []
    for src, targets in sorted(graph.items()):
        ls = layer_of(src)
        if ls is None or (src.startswith("pseudolabel.") and ls[1] == "root"):
            problems.append(f"{src} belongs to no layer: add its package to LAYERS in tests/test_layering.py")
            continue
        for dst in sorted(targets):
            ld = layer_of(dst)
            if ld is None:
                continue
            if ld[0] > ls[0] or (ls[1] == "root" and dst != src):
                problems.append(f"{src} (layer {ls[0]}, {ls[1]}) imports {dst} (layer {ld[0]}, {ld[1]}): upward")
            elif ls[0] == ld[0] == 2 and ls[1] != ld[1]:
                problems.append(f"stage {ls[1]} imports stage {ld[1]}: {src} -> {dst}")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def cycle_edges(graph: dict[str, set[str]], comp: list[str]) -> str:
    inside = set(comp)
    return ", ".join(f"{a} -> {b}" for a in comp for b in sorted(graph.get(a, ())) if b in inside)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {m: imports_of(m, p, known) for m, p in files.items()}


def test_no_import_reaches_up_a_layer_or_across_stages(graph):
    problems = edge_violations(graph)
    assert not problems, "layering broken:\n" + "\n".join(problems)


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(cycle_edges(graph, c) for c in found)


def unused_product_modules(graph: dict[str, set[str]], by_name: set[str] = frozenset()) -> list[str]:
    """Product modules that no entry point (``cli``, a command module, a module in ``by_name`` or
    under one) reaches through imports; importing ``a.b.c`` also runs ``a`` and ``a.b``.
    ``pseudolabel.testing`` is for tests and scripts and is not checked."""
    known = set(graph)

    def parents(m: str) -> set[str]:
        parts = m.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))} & known

    def named(m: str) -> bool:
        return any(m == n or m.startswith(n + ".") for n in by_name)

    todo = [m for m in known if m == "cli" or m.startswith("pseudolabel.commands") or named(m)]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, set()) | parents(m))
    return sorted(m for m in known - seen if m != "pseudolabel.testing" and not m.startswith("pseudolabel.testing."))


def engine_family_modules() -> set[str]:
    """The engine family modules the core imports by name (``loading`` → ``importlib``)."""
    sys.path.insert(0, str(REPO))
    try:
        from pseudolabel.core.engines.registry import FAMILIES
    finally:
        sys.path.remove(str(REPO))
    return {f"pseudolabel.core.engines.{f.module}" for f in FAMILIES.values()}


def test_no_product_module_serves_only_tests_or_scripts(graph):
    unused = unused_product_modules(graph, engine_family_modules() | set(LOADED_BY_NAME))
    assert not unused, ("product modules that only tests or scripts import (move them to pseudolabel/testing/ "
                        "or scripts/): " + ", ".join(unused))


def test_the_checks_catch_what_they_guard_against():
    # an upward import, a stage importing another stage, a root that imports, and a cycle
    bad = {"pseudolabel.core.rle": {"pseudolabel.viz.draw"}, "refine.prompts": {"segtrain.model"},
           "pseudolabel": {"pseudolabel.core.rle"}, "segtrain.a": {"segtrain.b"}, "segtrain.b": {"segtrain.a"},
           "pseudolabel.newthing.x": set()}
    problems = "\n".join(edge_violations(bad))
    assert "pseudolabel.core.rle (layer 1, core) imports pseudolabel.viz.draw (layer 3, tools): upward" in problems
    assert "stage refine imports stage segtrain" in problems
    assert "pseudolabel (layer 0, root) imports pseudolabel.core.rle" in problems
    assert "pseudolabel.newthing.x belongs to no layer" in problems
    assert cycles(bad) == [["segtrain.a", "segtrain.b"]]
    # a stage module only a test imports is found; the testing package and named modules are not
    used = {"cli": {"pseudolabel.commands.x"}, "pseudolabel.commands.x": {"refine.a"}, "refine.a": set(),
            "refine.helper": set(), "pseudolabel.viz.y": set(), "pseudolabel.testing.gen": {"refine.a"}, "pseudolabel.pocket.t": set()}
    assert unused_product_modules(used, {"pseudolabel.pocket"}) == ["pseudolabel.viz.y", "refine.helper"]


def test_imports_inside_functions_count(tmp_path):
    pkg = tmp_path / "pseudolabel" / "core"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    from ..viz import draw\n    from . import y\n")
    known = {"pseudolabel.core.x", "pseudolabel.core.y", "pseudolabel.viz", "pseudolabel.viz.draw"}
    assert imports_of("pseudolabel.core.x", pkg / "x.py", known) == {"pseudolabel.viz.draw", "pseudolabel.core.y"}


def test_files_hold_one_job():
    long = {m: n for m, p in module_files().items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them by job): {long}"


def test_importing_the_packages_loads_no_optional_engine():
    code = ("import sys, pseudolabel, refine, segtrain, cli; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {OPTIONAL!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_root_and_core_packages_import_nothing_heavy():
    code = "import sys, pseudolabel, pseudolabel.core; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
