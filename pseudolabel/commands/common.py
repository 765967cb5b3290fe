"""What every command module shares: option types, the exit rule for failed images, config splitting.

Exit codes of every command: 0 done; 1 done, but some images failed (listed in the output);
2 unusable input (one sentence, raised as :class:`~pseudolabel.core.errors.InputError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pseudolabel.core.errors import InputError

ImagesOpt = Annotated[Path, typer.Option("--images", help="Folder of the images named in the JSON.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: best available).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML file of option values (flags override it).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
GtOpt = Annotated[Path, typer.Option("--gt", help="Ground-truth COCO JSON with masks.")]
# the flags of pseudolabel.core.config.EngineOptions (engine, model, checkpoint, precision, device): one
# declaration each, shared by `sap proposals`, `sap refine`, `sap refine adapt` and `sap pipeline`
EngineOpt = Annotated[Optional[str], typer.Option("--engine", help="sam_vit_h (default), sam_vit_l, sam_vit_b, sam2.1_hiera_t/s/b+/l, hq_vit_h/l/b, hq_vit_tiny; sam_tiny/hq_tiny: tests (sap env lists which can run).")]
SamModelOpt = Annotated[Optional[str], typer.Option("--model", help="Deprecated: a SAM type (vit_b = --engine sam_vit_b).")]
SamCheckpointOpt = Annotated[Optional[str], typer.Option("--checkpoint", help="The engine's checkpoint file; 'none' = random weights (tests only); default: download the official one.")]
SamPrecisionOpt = Annotated[Optional[str], typer.Option("--precision", help="auto | fp32 | bf16 | fp16.")]
RefinePromptsOpt = Annotated[Optional[str], typer.Option("--prompts", help="Prompt kinds, comma-separated: point, box, mask (any subset: the paper's prompt ablation).")]
RefineEmbeddingsOpt = Annotated[Optional[str], typer.Option("--embeddings", help="Cache folder of `sap proposals --save-embeddings`: reuse its image embeddings.")]


def exit_for_failures(n_failed: int) -> None:
    """Exit with status 1 when some images failed (the command has listed them)."""
    if n_failed:
        raise typer.Exit(code=1)


def split_file_values(values: dict, *dataclass_types) -> list[dict]:
    """Share one config file's values among several option dataclasses (unknown keys rejected)."""
    import dataclasses

    names = [{f.name for f in dataclasses.fields(t)} for t in dataclass_types]
    unknown = sorted(set(values) - set().union(*names))
    if unknown:
        raise InputError(f"unknown configuration option(s): {', '.join(unknown)}")
    return [{k: v for k, v in values.items() if k in n} for n in names]
