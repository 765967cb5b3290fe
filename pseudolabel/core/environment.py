"""`sap env`: versions, devices and optional engines, as one report to paste into an issue."""

from __future__ import annotations

import importlib.util
import platform
import sys


def environment_report() -> str:
    """A multi-line report: Python, sap and library versions, devices, CUDA, optional engines."""
    import torch

    from .config import versions
    from .device import pick_device
    from .engines.loading import checkpoint_dir

    lines = [f"{k:<24}{v}" for k, v in versions().items()]
    lines.append(f"{'python executable':<24}{sys.executable}")
    lines.append(f"{'machine':<24}{platform.machine()}")
    lines.append(f"{'torch build':<24}{torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    lines.append(f"{'cuda available':<24}{torch.cuda.is_available()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"{'gpu ' + str(i):<24}{p.name}, {p.total_memory / 2**30:.1f} GiB")
        lines.append(f"{'bf16 on gpu':<24}{torch.cuda.is_bf16_supported()}")
    cpu = torch.cpu
    lines.append(f"{'cpu capability':<24}{torch.backends.cpu.get_cpu_capability()}")
    lines.append(f"{'cpu bf16 (avx512/amx)':<24}"
                 f"{getattr(cpu, '_is_avx512_bf16_supported', lambda: False)()}/"
                 f"{getattr(cpu, '_is_amx_tile_supported', lambda: False)()}")
    lines.append(f"{'torch threads':<24}{torch.get_num_threads()}")
    lines.append(f"{'default device':<24}{pick_device(None)}")
    lines.append(f"{'checkpoint folder':<24}{checkpoint_dir()}")
    lines.extend(engine_lines(checkpoint_dir()))
    d2 = importlib.util.find_spec("detectron2") is not None
    lines.append(f"{'train engine torch':<24}available")
    lines.append(f"{'train engine detectron2':<24}{'available' if d2 else 'not installed (pip install from its source repository)'}")
    return "\n".join(lines)


def engine_lines(ckpt_dir) -> list[str]:
    """One line per proposal engine: available or why not, and whether its checkpoint is here."""
    from .engines.registry import ENGINES, availability

    lines = []
    for name, spec in ENGINES.items():
        why = availability(name)
        if why is not None:
            state = f"not available: {why}"
        elif spec.bundled is not None:
            from .engines.loading import WEIGHTS_DIR

            here = (WEIGHTS_DIR / spec.bundled).is_file()
            state = (f"available, weights {'bundled' if here else 'MISSING (python scripts/train_pocket_sam.py)'}"
                     f": {spec.note}")
        elif spec.url is None:
            state = "available (random weights only: tests)"
        else:
            here = (ckpt_dir / spec.filename).is_file()
            state = "available, checkpoint " + ("downloaded" if here else "downloads on first use")
        lines.append(f"{'engine ' + name:<24}{state}")
    return lines
