"""SAMRefiner: refine any coarse mask with prompts mined from it (ALGORITHMS.md §4).

Modules: ``prompts`` (distance-guided points, tight box), ``cebox`` (context-aware elastic box),
``mask_prompt`` (Gaussian-style mask prompt), ``stm`` (split-then-merge), ``refiner`` (the
per-image loop and the prompt-kind registry), ``instances`` (COCO JSON in and out),
``semantic`` (PNG label maps), ``adapt`` (SAMRefiner++ IoU LoRA), ``corrupt`` (coarse masks
from ground truth for benchmarks). Heavy modules are imported on use.
"""

from .refiner import PROMPT_KINDS, RefineConfig, RefineResult, refine_masks

__all__ = ["PROMPT_KINDS", "RefineConfig", "RefineResult", "refine_masks"]
