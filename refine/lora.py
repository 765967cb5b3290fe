"""A rank-r LoRA on the last layer of SAM's IoU head, and adapter files (SAMRefiner++).

:class:`LoRALinear` wraps a frozen ``nn.Linear``; :func:`apply_adapter` attaches a trained
adapter file (``torch.save`` of the LoRA matrices, rank, scale, and the engine name (under
``model_type``) and checkpoint sha256 it was trained for) to an engine and refuses any other;
:func:`remove_adapter` puts the plain layer back. Training lives in :mod:`.adapt`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pseudolabel.core.engines.registry import ALIASES
from pseudolabel.core.errors import InputError
from pseudolabel.core.io import load_torch_file

ADAPTER_FORMAT = "sap-samrefiner-iou-lora"
ADAPTER_VERSION = 1


class LoRALinear(nn.Module):
    """``base(x) + scale · B(A(x))`` with ``base`` frozen, ``A`` ``r×in`` and ``B`` ``out×r``.

    ``B`` starts at zero, so a fresh adapter leaves the layer unchanged.
    """

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 4.0, seed: int = 0) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.scale = alpha / rank
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(base.in_features)
        a = (torch.rand(rank, base.in_features, generator=gen) * 2 - 1) * bound
        self.lora_a = nn.Parameter(a.to(base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(x, self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))
        return self.base(x) + self.scale * update


def iou_head_last_layer(engine) -> nn.Module:
    """The last layer of the engine's IoU prediction MLP (a ``Linear`` or an attached ``LoRALinear``)."""
    return engine.iou_head.layers[-1]


def base_linear(engine) -> nn.Linear:
    layer = iou_head_last_layer(engine)
    return layer.base if isinstance(layer, LoRALinear) else layer


def apply_adapter(engine, path: str | os.PathLike) -> LoRALinear:
    """Attach a trained adapter to the engine's IoU head (replacing any attached one).

    Raises:
        InputError: unreadable file, or an adapter trained for another model or checkpoint.
    """
    path = Path(path)
    state = load_torch_file(path, "adapter file")
    if not isinstance(state, dict) or state.get("format") != ADAPTER_FORMAT:
        raise InputError(f"{path} is not a `sap refine adapt` adapter file")
    trained_for = ALIASES.get(state["model_type"], state["model_type"])  # sap ≤ 0.1 wrote SAM types
    if (trained_for, state["checkpoint_sha256"]) != (engine.name, engine.checkpoint_id):
        raise InputError(
            f"adapter {path.name} was trained for {trained_for} with checkpoint "
            f"{str(state['checkpoint_sha256'])[:12]}, not {engine.name} with "
            f"{engine.checkpoint_id[:12]}")
    base = base_linear(engine)
    lora = LoRALinear(base, rank=int(state["rank"]), alpha=float(state["alpha"]))
    with torch.no_grad():
        lora.lora_a.copy_(state["lora_a"])
        lora.lora_b.copy_(state["lora_b"])
    lora.eval()
    engine.iou_head.layers[-1] = lora
    return lora


def remove_adapter(engine) -> None:
    """Put the plain last IoU layer back."""
    engine.iou_head.layers[-1] = base_linear(engine)
