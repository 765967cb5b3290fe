"""Orchestration: `sap pipeline` (every stage in one resumable run folder) and `sap demo`.

Modules: :mod:`.config` (the pipeline's options), :mod:`.pipeline` (stages, digests, skipping
and resuming), :mod:`.report` (closing table, ``report.md``), :mod:`.demo` (a shapes dataset and
a whole run on it). Nothing below this layer imports it.
"""

from .config import PipelineConfig, load_pipeline_config
from .demo import run_demo
from .pipeline import STAGES, Pipeline, StageRecord
from .report import closing_table, write_report

__all__ = ["STAGES", "Pipeline", "PipelineConfig", "StageRecord", "closing_table", "load_pipeline_config",
           "run_demo", "write_report"]
