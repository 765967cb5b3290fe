"""Atomic file writes and JSON helpers.

Every output of ``sap`` is written to a temporary file in the destination folder and renamed
into place, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary file is removed if the body raises. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _check_writable_folder(folder: Path, what: str, target: Path) -> None:
    """The nearest existing folder at or above ``folder`` must be a folder we can create files in."""
    from .errors import InputError

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{what} {target} cannot be created: {existing} is a file, not a folder")
    try:  # os.access lies for root and on read-only mounts: try it
        fd, probe = tempfile.mkstemp(prefix=".sap-write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"{what} {target} cannot be written: {existing} is not writable ({e.strerror})") from None


def check_output_file(path: str | os.PathLike, what: str = "the output",
                      inputs: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Check, before any work, that a file can be written at ``path`` (nothing is created).

    Args:
        inputs: the command's input files: the output may not be one of them.

    Raises:
        InputError: ``path`` is a folder, lies under a file, its folder is not writable, or it
            is one of ``inputs`` (an input is never overwritten).
    """
    from .errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name")
    for given in inputs:
        if given is not None and Path(given).exists() and Path(given).resolve() == path.resolve():
            raise InputError(f"{what} {path} is also an input of this command; an input is never overwritten")
    _check_writable_folder(path.parent, what, path)
    return path


def check_output_dir(path: str | os.PathLike, what: str = "the output folder") -> Path:
    """Check, before any work, that ``path`` is or can become a writable folder (nothing is created).

    Raises:
        InputError: ``path`` is a file, lies under a file, or cannot be written.
    """
    from .errors import InputError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a folder")
    _check_writable_folder(path, what, path)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = None) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def load_torch_file(path: str | os.PathLike, what: str) -> Any:
    """``torch.load`` a user-given file on the CPU (tensors and plain containers only).

    Args:
        path: the file.
        what: how to name it in the error ("SAM checkpoint", "adapter file", ...).

    Raises:
        InputError: the file does not exist or cannot be read by ``torch.load``.
    """
    import torch

    from .errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and truncation errors all mean "not a usable file"
        raise InputError(f"{what} {path} cannot be read: it is not a PyTorch file this version can "
                         f"load ({first_line(e)})") from None


def check_torch_file(path: str | os.PathLike, what: str) -> Path:
    """A cheap look (no loading) that ``path`` can be a ``torch.save`` file: it exists and starts
    like a zip archive or a pickle. For checks before a long run; :func:`load_torch_file` reads it.

    Raises:
        InputError: the file is missing or is plainly something else.
    """
    from .errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise InputError(f"{what} {path} is not a PyTorch file (it is neither a zip archive nor a pickle)")
    return path


def first_line(e: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters (for one-sentence errors)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
