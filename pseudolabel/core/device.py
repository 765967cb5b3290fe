"""Devices and processes: which device a command runs on, and its place in a ``torchrun`` job.

One rule for every stage: an explicit ``--device`` wins (and is checked); otherwise this
process's GPU (``cuda:$LOCAL_RANK``), then Apple's MPS where the caller allows it, then the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import InputError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a distributed run (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    NCCL when CUDA is present (after binding this process to its local GPU), gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def pick_device(device: str | None = None, local_rank: int | None = None, *, mps: bool = True) -> torch.device:
    """``device`` if given (checked), else the best available one.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:1``, ``mps`` ... or None for the best available.
        local_rank: this process's GPU index for a bare ``cuda`` or no device; default
            ``$LOCAL_RANK`` (0 outside ``torchrun``).
        mps: whether MPS counts as "available" when no device is given (training loops that
            need ops MPS lacks pass False).

    Raises:
        InputError: the string is not a device, or CUDA is asked for and absent.
    """
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if mps and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a device (cpu, cuda, cuda:1 ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} asks for CUDA but this machine has no usable GPU")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev
