"""A rank-r LoRA on the last layer of SAM's IoU head, and adapter files (SAMRefiner++).

:class:`LoRALinear` wraps a frozen ``nn.Linear``; :func:`apply_adapter` attaches a trained
adapter file (``torch.save`` of the LoRA matrices, rank, scale, and the model type and
checkpoint sha256 it was trained for) to an engine and refuses any other model;
:func:`remove_adapter` puts the plain layer back. Training lives in :mod:`.adapt`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

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


def iou_head_last_layer(model) -> nn.Module:
    """The last layer of SAM's IoU prediction MLP (a ``Linear`` or an attached ``LoRALinear``)."""
    return model.mask_decoder.iou_prediction_head.layers[-1]


def base_linear(model) -> nn.Linear:
    layer = iou_head_last_layer(model)
    return layer.base if isinstance(layer, LoRALinear) else layer


def apply_adapter(engine, path: str | os.PathLike) -> LoRALinear:
    """Attach a trained adapter to ``engine.model`` (replacing any attached one).

    Raises:
        InputError: unreadable file, or an adapter trained for another model or checkpoint.
    """
    path = Path(path)
    state = load_torch_file(path, "adapter file")
    if not isinstance(state, dict) or state.get("format") != ADAPTER_FORMAT:
        raise InputError(f"{path} is not a `sap refine adapt` adapter file")
    if (state["model_type"], state["checkpoint_sha256"]) != (engine.model_type, engine.checkpoint_id):
        raise InputError(
            f"adapter {path.name} was trained for SAM {state['model_type']} with checkpoint "
            f"{str(state['checkpoint_sha256'])[:12]}, not {engine.model_type} with "
            f"{engine.checkpoint_id[:12]}")
    base = base_linear(engine.model)
    lora = LoRALinear(base, rank=int(state["rank"]), alpha=float(state["alpha"]))
    with torch.no_grad():
        lora.lora_a.copy_(state["lora_a"])
        lora.lora_b.copy_(state["lora_b"])
    lora.eval()
    engine.model.mask_decoder.iou_prediction_head.layers[-1] = lora
    return lora


def remove_adapter(engine) -> None:
    """Put the plain last IoU layer back."""
    engine.model.mask_decoder.iou_prediction_head.layers[-1] = base_linear(engine.model)
