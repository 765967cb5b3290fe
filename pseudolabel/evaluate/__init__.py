"""Measuring results against ground truth (``sap eval``), a cross-stage tool.

Modules: :mod:`.masks` (size buckets, boundary IoU), :mod:`.pseudo` (pseudo-labels matched by id,
predictions by COCO mask AP, per-image disagreement), :mod:`.tables` (side-by-side tables),
:mod:`.run` (the files in and out of ``sap eval``). COCOeval glue lives in
:mod:`pseudolabel.core.cocoeval` because training scores models with it too.
"""

from pseudolabel.core.cocoeval import AP_KEYS, coco_mask_ap

from .masks import boundary_dilation, boundary_iou, mask_boundary, size_bucket
from .pseudo import annotation_ious, evaluate_predictions, evaluate_pseudo, image_disagreement
from .run import load_pseudo_file, load_results_file, run_eval
from .tables import compare, format_table

__all__ = ["AP_KEYS", "annotation_ious", "boundary_dilation", "boundary_iou", "coco_mask_ap", "compare", "evaluate_predictions",
           "evaluate_pseudo", "format_table", "image_disagreement", "load_pseudo_file", "load_results_file",
           "mask_boundary", "run_eval", "size_bucket"]
