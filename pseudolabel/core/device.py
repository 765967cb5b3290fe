"""Devices and processes: which device a command runs on, and its place in a ``torchrun`` job.

One rule for every stage: an explicit ``--device`` wins (and is checked); otherwise this
process's GPU (``cuda:$LOCAL_RANK``), then Apple's MPS where the caller allows it, then the CPU.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta

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


#: seconds a collective waits for a silent peer before this process gives up (``SAP_DIST_TIMEOUT``)
DIST_TIMEOUT_S = 1800
RESUME_ADVICE = "rerun the same command (with --resume for select and train) to continue from what was saved"


def init_distributed() -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    NCCL when CUDA is present (after binding this process to its local GPU), gloo otherwise;
    collectives give up after ``$SAP_DIST_TIMEOUT`` seconds (default :data:`DIST_TIMEOUT_S`), so
    a rank whose peer died never waits forever. SIGTERM (what ``torchrun`` sends the other ranks
    when one fails) ends this process with one sentence and exit status 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        timeout = timedelta(seconds=float(os.environ.get("SAP_DIST_TIMEOUT", DIST_TIMEOUT_S)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    signal.signal(signal.SIGTERM, lambda *_: _stop(f"rank {info.rank} of {info.world_size} was stopped by "
                                                  f"torchrun because another rank failed; {RESUME_ADVICE}"))
    return info


def _stop(sentence: str) -> None:
    print(f"error: {sentence}", file=sys.stderr, flush=True)
    os._exit(1)


def peer_failure(error: BaseException) -> str | None:
    """One sentence for an error that says another process of this ``torchrun`` job is gone
    (a collective that lost its peer or timed out), else None."""
    if "torch.distributed" not in sys.modules or os.environ.get("WORLD_SIZE", "1") == "1":
        return None
    import torch.distributed as dist

    if not isinstance(error, (dist.DistError, RuntimeError)) or not dist.is_initialized():
        return None
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    return (f"rank {dist.get_rank()} of {dist.get_world_size()} lost another process of the torchrun job "
            f"({first}); {RESUME_ADVICE}")


def cores_per_process(local_world_size: int | None = None) -> int:
    """CPU cores this process may use (its affinity mask where the OS has one) shared by the
    processes of the job on this machine (default ``$LOCAL_WORLD_SIZE``, set by torchrun); >= 1."""
    if local_world_size is None:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_world_size))


def loader_workers(cap: int, local_world_size: int | None = None) -> int:
    """DataLoader worker processes: at most ``cap`` (``--workers``) and at most this process's
    share of the cores, :func:`cores_per_process` (2 processes on 2 cores: 1 worker each)."""
    return min(int(cap), cores_per_process(local_world_size))


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


@functools.lru_cache(maxsize=1)
def _glibc():
    """glibc through ctypes (None off Linux/glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Hand the heap's freed pages back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Full-resolution masks of a large image are allocated and freed chunk after chunk; glibc keeps
    the freed pages, so without this the resident memory of `sap proposals --windows off` grew by
    ~100 MB per point at 4,096² (docs/windows.md).
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
