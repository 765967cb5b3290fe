"""Pictures of masks (``sap viz``), a cross-stage tool: :mod:`.draw` (primitives) and
:mod:`.sheets` (overlays, side-by-side panels, disagreement sheets of whole files), :mod:`.prompts`
(the prompts of `sap refine --dump-prompts`)."""

from .draw import Instance, draw_instances, instance_color
from .sheets import VizReport, render_disagreement_sheet, render_overlays, render_side_by_side

__all__ = ["Instance", "VizReport", "draw_instances", "instance_color", "render_disagreement_sheet",
           "render_overlays", "render_side_by_side"]
