"""What a pipeline run tells its user at the end: the closing table and ``report.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pseudolabel.core.io import write_text_atomic

from .pipeline import StageRecord


def closing_table(records: list[StageRecord]) -> str:
    """One line per stage: status, seconds, and its key numbers; then :func:`selection_line`."""
    lines = [f"{'stage':<10}{'status':<9}{'seconds':>9}  key numbers"]
    for r in records:
        lines.append(f"{r.stage:<10}{r.status:<9}{r.seconds:>9.1f}  {_key_numbers(r)}")
    if (line := selection_line(records)) is not None:
        lines += ["", line]
    return "\n".join(lines)


def selection_line(records: list[StageRecord]) -> str | None:
    """Pseudo-mask mIoU of SAM's top-1, the selector's pick and the refined pick side by side,
    with what they mean; None without ground truth (or when select did not run)."""
    sel = next((r.metrics for r in records if r.stage == "select"), {})
    ref = next((r.metrics for r in records if r.stage == "refine"), {})
    method = sel.get("method")
    values = [(name, (sel.get(name) or {}).get("mask_miou")) for name in ("sam-top1", method)]
    values.append(("refined", (ref.get("refined_miou") or {}).get("mask_miou")))
    shown = [f"{name} {v:.3f}" for name, v in values if isinstance(v, float)]
    if len(shown) < 2:
        return None
    return (f"pseudo-mask mIoU against the ground truth: {' | '.join(shown)}\n"
            f"(SAM's best-scored proposal, the {method} selector's pick, and that pick refined: the selector "
            "earns its training where its number beats sam-top1's)")


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _key_numbers(r: StageRecord) -> str:
    m = r.metrics
    if r.stage == "select":
        parts = [f"{m.get('pseudo_masks')} pseudo-masks ({m.get('method')})"]
        for name in ("sam-top1", m.get("method")):
            if isinstance(m.get(name), dict) and m[name].get("mask_miou") is not None:
                parts.append(f"{name} mIoU {m[name]['mask_miou']:.3f}")
        return ", ".join(parts)
    if r.stage == "refine" and "refined_miou" in m:
        return f"{m['refined']} refined, mIoU {_fmt(m['refined_miou'].get('mask_miou'))}"
    if r.stage == "eval" and "mask_ap" in m:
        ap = m["mask_ap"]
        return f"mask AP {ap['AP']:.1f}, AP50 {ap['AP50']:.1f}, AP75 {ap['AP75']:.1f}"
    if r.stage == "train" and m:
        return f"{m.get('iters')} iterations, loss {_fmt(m.get('first_loss'))} → {_fmt(m.get('last_loss'))}"
    return ", ".join(f"{k} {_fmt(v)}" for k, v in m.items() if not isinstance(v, (dict, list)))


def write_report(run: Path, records: list[StageRecord], banner: str | None = None) -> Path:
    """``report.md`` of a run: the closing table, the pseudo-label table, where the pictures are."""
    parts = ["# sap run report", ""]
    if banner:
        parts += ["```", banner.strip(), "```", ""]
    parts += ["## Stages", "", "```", closing_table(records), "```", ""]
    table = next((r.outputs.get("pseudo_table") for r in records if r.stage == "eval"), None)
    if table and Path(table).is_file():
        parts += ["## Pseudo-labels against the ground truth", "", "```", Path(table).read_text().rstrip(), "```", ""]
    viz = next((r for r in records if r.stage == "viz"), None)
    if viz:
        parts += ["## Pictures", ""] + [f"- {k}: `{v}`" for k, v in viz.outputs.items()] + [""]
    return write_text_atomic(run / "report.md", "\n".join(parts))
