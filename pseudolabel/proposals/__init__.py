"""Stage 1, `sap proposals`: SAM multi-mask proposals for every annotated point, into the cache.

Modules: :mod:`.prompt_kinds` (the prompt kinds a bag is made of: ``point``, ``point_box``) and
:mod:`.run` (the stage: encode each image once, decode all its points in batches, write the
cache shard by shard). The cache format itself is :mod:`pseudolabel.core.cache`.
"""

from .prompt_kinds import PROMPT_KINDS
from .run import ProposalConfig, ProposalSummary, cache_overview, run_proposals

__all__ = ["PROMPT_KINDS", "ProposalConfig", "ProposalSummary", "cache_overview", "run_proposals"]
