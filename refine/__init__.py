"""Stage 3, `sap refine`: SAMRefiner, refine any coarse mask with prompts mined from it.

By default it follows the official code rule for rule (docs/fidelity.md). Modules: ``reference``
(the official code's rules vs the paper's, by name), ``distance`` (chamfer and Euclidean distance
maps), ``prompts`` (distance-guided points, tight box), ``cebox`` and ``cebox_official``
(context-aware elastic box), ``mask_prompt`` (Gaussian-style mask prompt), ``stm``
(split-then-merge), ``refiner`` (the per-image loop and the prompt-kind registry), ``inputs`` (usable coarse masks, embeddings from a
cache or the encoder), ``instances`` (COCO JSON in and out), ``semantic`` (PNG label maps),
``lora`` and ``adapt`` (SAMRefiner++ IoU LoRA and its training). Coarse masks made from ground
truth for benchmarks (`sap corrupt`) live in :mod:`pseudolabel.testing.corrupt`.
"""

from .adapt import AdaptConfig, adapt_coco
from .instances import RefineSummary, run_refine
from .refiner import PROMPT_KINDS, RefineConfig, RefineResult, refine_masks
from .semantic import SemanticConfig, refine_semantic

__all__ = ["PROMPT_KINDS", "AdaptConfig", "RefineConfig", "RefineResult", "RefineSummary",
           "SemanticConfig", "adapt_coco", "refine_masks", "refine_semantic", "run_refine"]
