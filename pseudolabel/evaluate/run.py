"""``sap eval``: read the files, measure each, print one table, write the report atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from pseudolabel.core.coco import check_categories, checked_coco, load_coco_json
from pseudolabel.core.errors import InputError
from pseudolabel.core.io import check_output_file, write_json_atomic

from .pseudo import evaluate_predictions, evaluate_pseudo
from .tables import compare, format_table


def _read_json(path: Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist or is not a file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{what} {path} is not valid JSON ({e})") from None
    except RecursionError:
        raise InputError(f"{what} {path} nests its lists or objects too deeply to be read as JSON") from None


def load_pseudo_file(path: str | os.PathLike) -> dict | list[dict]:
    """Read pseudo-labels: a COCO dataset (structure-checked) or a JSON list of annotations."""
    data = _read_json(Path(path), "the pseudo-label file")
    if isinstance(data, dict):  # checked as parsed: a second parse would hold the file twice
        coco = checked_coco(data, path)
        check_categories(coco, str(path))
        return coco
    if isinstance(data, list):
        return data
    raise InputError(f"{path} holds neither a COCO dataset nor a list of annotations")


def load_results_file(path: str | os.PathLike) -> list[dict]:
    """Read model predictions: a COCO results list, or a COCO dataset whose annotations carry
    scores."""
    data = _read_json(Path(path), "the prediction file")
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise InputError(f"{path} is not a COCO results list")
    return data


def _unique_names(paths: Sequence[Path], given: Sequence[str]) -> list[str]:
    if len(given) > len(paths):
        raise InputError(f"{len(given)} --name values given for {len(paths)} results")
    names = list(given) + [Path(p).stem for p in paths[len(given):]]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def run_eval(
    gt_path: str | os.PathLike,
    pseudo_paths: Sequence[str | os.PathLike] = (),
    pred_paths: Sequence[str | os.PathLike] = (),
    names: Sequence[str] = (),
    out: str | os.PathLike | None = None,
    per_annotation: bool = False,
    boundary: bool = True,
) -> tuple[str, dict[str, Any]]:
    """What ``sap eval`` does: measure every file, build the table, write the JSON atomically.

    Names go to the results in order (every pseudo-label file, then every prediction file);
    missing names default to the file stem.

    Returns:
        ``(table_text, report)`` with ``report = {"gt": str, "results": {name: metrics}}``;
        each metrics dict also holds its ``source`` path (``per_annotation`` only if asked).
    """
    pseudo_paths = [Path(p) for p in pseudo_paths]
    pred_paths = [Path(p) for p in pred_paths]
    if not pseudo_paths and not pred_paths:
        raise InputError("give at least one --pseudo or --pred file to measure")
    if out is not None:
        check_output_file(out, "--out", inputs=(gt_path, *pseudo_paths, *pred_paths))
    gt = load_coco_json(gt_path)
    check_categories(gt, str(gt_path))
    all_paths = [*pseudo_paths, *pred_paths]
    col_names = _unique_names(all_paths, list(names))
    results: dict[str, dict[str, Any]] = {}
    for i, (n, p) in enumerate(zip(col_names, all_paths)):
        if i < len(pseudo_paths):
            m = evaluate_pseudo(gt, load_pseudo_file(p), boundary=boundary, source=str(p), gt_source=str(gt_path))
            if not per_annotation:
                m.pop("per_annotation")
        else:
            m = evaluate_predictions(gt, load_results_file(p), source=str(p))
        m["source"] = str(p)
        results[n] = m
    report = {"gt": str(gt_path), "results": results}
    text = format_table(compare(results))
    if out is not None:
        write_json_atomic(out, report, indent=1)
    return text, report
