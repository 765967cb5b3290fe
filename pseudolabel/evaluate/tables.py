"""Several metric dicts side by side: :func:`compare` builds the table, :func:`format_table` prints it.

IoUs and shares are stored in ``[0, 1]`` and shown in percent; AP is stored and shown in percent.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from pseudolabel.core.cocoeval import AP_KEYS

from .masks import SIZE_BUCKETS

# (row label, path into the metrics dict, formatter kind)
_PSEUDO_ROWS: tuple[tuple[str, tuple, str], ...] = (
    ("matched", ("counts", "matched"), "int"),
    ("GT without pseudo", ("counts", "gt_without_pseudo"), "int"),
    ("pseudo without GT", ("counts", "pseudo_without_gt"), "int"),
    ("mask mIoU", ("overall", "mask_miou"), "pct"),
    ("box mIoU", ("overall", "box_miou"), "pct"),
    ("boundary mIoU", ("overall", "boundary_miou"), "pct"),
    ("IoU >= 0.5", ("overall", "iou50"), "pct"),
    ("IoU >= 0.75", ("overall", "iou75"), "pct"),
    *((f"mask mIoU {s}", ("by_size", s, "mask_miou"), "pct") for s in SIZE_BUCKETS),
    *((f"boundary mIoU {s}", ("by_size", s, "boundary_miou"), "pct") for s in SIZE_BUCKETS),
)
_PRED_ROWS: tuple[tuple[str, tuple, str], ...] = (
    ("results", ("counts", "results"), "int"),
    *((k, ("ap", k), "ap") for k in AP_KEYS),
)


def _dig(metrics: Mapping[str, Any], path: tuple) -> Any:
    cur: Any = metrics
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            return None
        cur = cur[key]
    return cur


def compare(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Put several metric dicts side by side.

    Args:
        results: name → metrics from :func:`evaluate_pseudo` or :func:`evaluate_predictions`
            (kinds may be mixed; a row a result lacks is left empty).

    Returns:
        ``{"columns": [name, ...], "rows": [{"metric": label, "values": [v | None, ...],
        "format": "int" | "pct" | "ap", "best": index | None}, ...]}``. Values are as stored
        (IoUs in ``[0, 1]``, AP in percent); ``best`` marks the highest value of a quality row
        when there are two or more results.
    """
    names = list(results)
    kinds = {m.get("kind") for m in results.values()}
    spec: list[tuple[str, tuple, str]] = []
    if "pseudo" in kinds:
        spec += list(_PSEUDO_ROWS)
    if "pred" in kinds:
        spec += list(_PRED_ROWS)
    rows = []
    for label, path, fmt in spec:
        values = [_dig(results[n], path) for n in names]
        vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
        if not vals:
            continue
        best = None
        if fmt != "int" and len(names) > 1 and len(set(vals)) > 1:
            best = values.index(max(vals))
        rows.append({"metric": label, "values": values, "format": fmt, "best": best})
    return {"columns": names, "rows": rows}


def _cell(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if fmt == "int":
        return str(int(v))
    if fmt == "pct":
        return f"{100.0 * v:.1f}"
    return f"{v:.1f}"


def format_table(table: Mapping[str, Any]) -> str:
    """Plain-text rendering of :func:`compare`'s table: IoUs and shares in percent with one
    decimal, AP in percent, the best value of a row marked with ``*``."""
    header = ["metric", *table["columns"]]
    body = []
    for row in table["rows"]:
        cells = [_cell(v, row["format"]) for v in row["values"]]
        if row["best"] is not None:
            cells[row["best"]] += "*"
        body.append([row["metric"], *cells])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)
