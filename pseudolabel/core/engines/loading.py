"""Building engines: official checkpoints (download once, digest checked) and loading weights.

Every engine, official or random, goes through :func:`load_model`: the family builds its network
from its package's own configuration with seeded random weights, then the checkpoint's state dict
is loaded into it. ``checkpoint="none"`` keeps the random weights (tests, offline demos) with a
loud warning. A state dict may sit under a ``"model"`` key (SAM 2's release format).

Key policy, per family, as each family's own builder: a *missing* key always stops with one
sentence (a weight would stay random); an *unexpected* key stops SAM and SAM 2, while HQ-SAM
(whose own builder loads non-strictly) only warns and lists them.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch

from ..errors import InputError
from ..io import load_torch_file
from ..progress import logger
from .registry import EngineSpec, availability, canonical_engine, engine_spec

RANDOM_CHECKPOINT = "none"
#: checkpoints shipped inside the package (the pocket SAM's)
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


def checkpoint_dir() -> Path:
    """Where downloaded checkpoints live: ``$SAP_CHECKPOINT_DIR`` or ``~/.cache/sap/checkpoints``."""
    env = os.environ.get("SAP_CHECKPOINT_DIR")
    return Path(env) if env else Path.home() / ".cache" / "sap" / "checkpoints"


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def sha256_of(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def family_module(spec: EngineSpec):
    """The family module of an engine (imports its optional package only when called).

    Raises:
        InputError: the family's package is not installed (with install help).
    """
    missing = availability(spec.name)
    if missing is not None:
        raise InputError(f"engine {spec.name} cannot run: {missing}")
    return importlib.import_module(f"{__package__}.{spec.family_info.module}")


def check_download(spec: EngineSpec, path: Path) -> None:
    """Compare a downloaded file with what is published about it (sha256, else md5, and size).

    Raises:
        InputError: a digest or the size differs.
    """
    if spec.size is not None and path.stat().st_size != spec.size:
        raise InputError(f"the downloaded {spec.filename} has {path.stat().st_size} bytes, expected {spec.size}")
    for algorithm, expected in (("sha256", spec.sha256), ("md5", spec.md5)):
        if expected is not None:
            got = file_digest(path, algorithm)
            if got != expected:
                raise InputError(f"the downloaded {spec.filename} has {algorithm} {got}, expected {expected}")
            return


def download_checkpoint(name: str, dest_dir: Path | None = None) -> Path:
    """Download the official checkpoint of engine ``name`` once, checking its digest.

    Raises:
        InputError: the engine has no released weights, the download fails (offline), or the
            downloaded file's digest is wrong.
    """
    spec = engine_spec(name)
    if spec.url is None:
        raise InputError(f"engine {spec.name} has no released weights; use --checkpoint none")
    dest_dir = dest_dir or checkpoint_dir()
    dest = dest_dir / spec.filename
    if dest.is_file():
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    logger.info("downloading %s to %s", spec.url, dest)
    try:
        from tqdm import tqdm

        with urllib.request.urlopen(spec.url, timeout=60) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length", 0)) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=spec.filename) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        raise InputError(
            f"could not download the {spec.name} checkpoint ({e}); download {spec.url} on a "
            f"machine with internet and put it at {dest} or pass --checkpoint PATH"
        ) from None
    try:
        check_download(spec, tmp)
    except InputError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)
    return dest


def bundled_checkpoint(name: str) -> Path:
    """The checkpoint of engine ``name`` shipped in :data:`WEIGHTS_DIR` (the pocket SAM's).

    Raises:
        InputError: the engine ships none, the file is missing, or its sha256 is not the one the
            registry records.
    """
    spec = engine_spec(name)
    if spec.bundled is None:
        raise InputError(f"engine {spec.name} ships no weights")
    path = WEIGHTS_DIR / spec.bundled
    if not path.is_file():
        raise InputError(f"the {spec.name} weights {path} are missing; make them with "
                         "python scripts/train_pocket_sam.py or pass --checkpoint PATH")
    if spec.sha256 is not None and (digest := sha256_of(path)) != spec.sha256:
        raise InputError(f"{path} has sha256 {digest}, expected {spec.sha256}; restore it from git "
                         "or retrain it with python scripts/train_pocket_sam.py")
    return path


def default_checkpoint(name: str) -> Path:
    """Where :func:`load_model` finds engine ``name``'s weights when none is given: the bundled
    file, else the official checkpoint (downloaded once)."""
    return bundled_checkpoint(name) if engine_spec(name).bundled else download_checkpoint(name)


def build_architecture(name: str, seed: int = 0) -> torch.nn.Module:
    """The network of engine ``name`` with seeded random weights, in eval mode on the CPU."""
    spec = engine_spec(name)
    module = family_module(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = module.build(spec)
    return model.eval()


def _fit_state(model: torch.nn.Module, state: dict, spec: EngineSpec, path: Path, strict_unexpected: bool) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    if missing or wrong or (unexpected and strict_unexpected):
        first = (f"missing {missing[0]}" if missing else f"shape of {wrong[0]}" if wrong
                 else f"unexpected {unexpected[0]}")
        n = len(missing) + len(wrong) + (len(unexpected) if strict_unexpected else 0)
        raise InputError(f"checkpoint {path} does not fit engine {spec.name} ({first}, {n} keys in all)")
    if unexpected:
        logger.warning("checkpoint %s has %d keys engine %s does not use (first: %s)", path,
                       len(unexpected), spec.name, unexpected[0])
    model.load_state_dict({k: state[k] for k in own}, strict=True)


def load_model(name: str, checkpoint: str | os.PathLike | None = None) -> tuple[torch.nn.Module, str]:
    """Build engine ``name``'s network and load its weights.

    Args:
        name: an engine name (or a deprecated SAM type such as ``vit_b``).
        checkpoint: a checkpoint file; ``None`` takes the bundled one (the pocket SAM) or
            downloads (or reuses) the official one;
            ``"none"`` keeps seeded random weights (tests and offline demos only: the masks are
            meaningless, and a warning says so).

    Returns:
        ``(model, checkpoint_id)``: the model in eval mode on the CPU, and the sha256 of the
        checkpoint file (``"random-init"`` for random weights).
    """
    spec = engine_spec(name)
    model = build_architecture(spec.name)
    if checkpoint is not None and str(checkpoint).lower() == RANDOM_CHECKPOINT:
        logger.warning(
            "!!! %s has RANDOM weights (--checkpoint none): its masks are meaningless; "
            "use this only for tests and offline demos !!!", spec.name)
        return model, "random-init"
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint(spec.name)
    state = load_torch_file(path, f"{spec.name} checkpoint")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InputError(f"checkpoint {path} holds no state dict")
    _fit_state(model, state, spec, path, family_module(spec).STRICT_UNEXPECTED)
    return model, sha256_of(path)


def save_random_checkpoint(name: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """Save a randomly initialised checkpoint of engine ``name`` in its release format."""
    spec = engine_spec(name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = build_architecture(spec.name, seed=seed).state_dict()
    torch.save(family_module(spec).release_format(state), path)
    return path


def create_engine(name: str, checkpoint: str | None = None, device: str | None = None,
                  precision: str = "fp32"):
    """Load engine ``name`` (see :func:`load_model`) on a device (see
    :func:`~pseudolabel.core.device.pick_device`); ``precision`` ``auto`` is resolved per device."""
    from ..device import pick_device
    from .base import resolve_precision

    spec = engine_spec(canonical_engine(name))
    module = family_module(spec)
    model, ckpt = load_model(spec.name, checkpoint)
    dev = pick_device(device)
    return module.ENGINE(model, spec.name, ckpt, dev, resolve_precision(precision, dev))
