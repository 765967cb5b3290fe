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
from typing import Any, Iterable, Iterator

from .errors import SapError


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
    except BaseException as e:
        written = tmp_path.stat().st_size if tmp_path.exists() else 0
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if is_disk_full(e):
            raise disk_full_error(path, e, written) from None
        raise


@contextlib.contextmanager
def disk_full_names(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk met in the body (an ``OSError``, SQLite's or ``torch.save``'s error) into
    the one sentence of :func:`disk_full_error` naming ``path``; other errors pass unchanged."""
    try:
        yield
    except Exception as e:
        if is_disk_full(e) and not isinstance(e, SapError):
            raise disk_full_error(path, e) from None
        raise


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` says the disk (or the quota) is full: ``ENOSPC``/``EDQUOT``/``EFBIG`` from the
    OS, ``torch.save``'s "file write failed", or SQLite's "database or disk is full"."""
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    text = str(e)
    return ("No space left on device" in text or "file write failed" in text
            or "database or disk is full" in text)


def disk_full_error(path: str | os.PathLike, e: BaseException, written: int = 0) -> Exception:
    """The one sentence for a full disk: the file, how much was written, the space left. It never
    suggests ``--overwrite``: what was committed before (a cache, a journal, a checkpoint) stays."""
    import shutil

    from .errors import DiskFullError

    path = Path(path)
    folder = path.parent if path.parent.exists() else Path(".")
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free there"
    except OSError:
        free = "free space unknown"
    done = f"; {_size(written)} had been written" if written else ""
    return DiskFullError(f"{path} could not be written: the disk is full ({free}{done}); free some space "
                         f"and run the same command again: what was already saved is kept")


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


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


def check_not_input(path: str | os.PathLike, what: str, inputs: tuple[str | os.PathLike | None, ...],
                    folder: bool = False) -> None:
    """Refuse an output that is, or lies inside, one of the command's inputs (files and folders:
    the annotation file, the image folder, a proposal cache, a run folder, weights, embeddings).

    Args:
        path: the output (file or folder).
        inputs: every input path of the command (``None`` entries are ignored).
        folder: ``path`` is an output folder: an input inside it is refused as well (the command
            writes and replaces files there).

    Raises:
        InputError: one sentence naming the output and the input it would overwrite.
    """
    from .errors import InputError

    out = Path(os.path.abspath(path))
    out_real = Path(os.path.realpath(out))
    for given in inputs:
        if given is None or str(given) in ("", "none"):
            continue
        src = Path(os.path.realpath(os.path.abspath(given)))
        if not src.exists():
            continue
        if out_real == src or src in out_real.parents:
            where = "is" if out_real == src else "lies inside"
            raise InputError(f"{what} {path} {where} the input {given}; an input is never overwritten")
        if folder and out_real in src.parents:
            raise InputError(f"{what} {path} holds the input {given}; write the output to another folder "
                             f"(an input is never overwritten)")


_FOLDER_SPELLINGS: set[str] = set()  # paths the command line wrote with a trailing slash


def note_folder_spellings(argv: list[str]) -> None:
    """Remember the arguments written with a trailing ``/`` (``--out dir/``): the command line's
    paths lose it, yet the user meant a folder, so :func:`check_output_file` refuses them."""
    _FOLDER_SPELLINGS.clear()
    for arg in argv:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if len(value) > 1 and value.endswith(("/", os.sep)):
            _FOLDER_SPELLINGS.add(os.path.abspath(value))


def check_output_file(path: str | os.PathLike, what: str = "the output",
                      inputs: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Check, before any work, that a file can be written at ``path`` (nothing is created).

    Args:
        inputs: the command's inputs (files and folders): the output may not be one of them
            nor lie inside one (:func:`check_not_input`).

    Raises:
        InputError: ``path`` is a folder, lies under a file, its folder is not writable, or it
            is or lies inside one of ``inputs`` (an input is never overwritten).
    """
    from .errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name")
    if os.path.abspath(path) in _FOLDER_SPELLINGS:
        raise InputError(f"{what} {path}/ ends with '/', which names a folder, but this output is a file; "
                         f"give a file name")
    check_not_input(path, what, inputs)
    _check_writable_folder(path.parent, what, path)
    return path


def check_output_dir(path: str | os.PathLike, what: str = "the output folder",
                     inputs: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Check, before any work, that ``path`` is or can become a writable folder (nothing is created).

    Args:
        inputs: the command's inputs (files and folders): the folder may not be one of them,
            lie inside one, or hold one (:func:`check_not_input` with ``folder=True``).

    Raises:
        InputError: ``path`` is a file, lies under a file, cannot be written, or clashes with
            an input.
    """
    from .errors import InputError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a folder")
    check_not_input(path, what, inputs, folder=True)
    _check_writable_folder(path, what, path)
    return path


def path_inside(root: str | os.PathLike, name: str, what: str = "file_name") -> Path:
    """``root / name`` for a relative ``name`` that stays inside ``root`` (sub-folders allowed).

    The one place a path is derived from a ``file_name`` of an annotation file, for reading
    (under ``--images``) and for writing (under ``--out``).

    Raises:
        InputError: ``name`` is absolute, or a ``..`` part leads outside ``root``.
    """
    from .errors import InputError

    reason = file_name_problem(name)
    if reason:
        raise InputError(f"{what} {name!r} {reason}; it must be a path relative to {root}")
    return Path(root) / name


def file_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a ``file_name`` relative to a folder, or ``None`` if it can:
    an absolute path (POSIX or Windows) or one whose ``..`` parts climb out of the folder."""
    import ntpath
    import posixpath

    if posixpath.isabs(name) or ntpath.isabs(name) or ntpath.splitdrive(name)[0]:
        return "is an absolute path"
    depth = 0
    for part in name.replace("\\", "/").split("/"):
        depth += -1 if part == ".." else (0 if part in ("", ".") else 1)
        if depth < 0:
            return "climbs out of its folder with '..'"
    return None


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = None) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_json_stream(path: str | os.PathLike, items: Iterable[Any], head: dict[str, Any] | None = None,
                      key: str | None = None, tail: dict[str, Any] | None = None) -> Path:
    """Write, atomically and item by item, the bytes ``json.dump(list(items))`` would (or, with
    ``key``, ``json.dump({**head, key: list(items), **tail})``) without holding the list;
    ``items`` may be a generator (an error it raises leaves no file)."""
    if (key is None) != (head is None) or (tail and key is None):
        raise ValueError("head, key and tail go together")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            if key is not None:
                f.write(json.dumps(head)[:-1] + (", " if head else "") + json.dumps(key) + ": ")
            f.write("[")
            for i, item in enumerate(items):
                f.write((", " if i else "") + json.dumps(item))
            f.write("]")
            if key is not None:
                f.write((", " + json.dumps(tail)[1:]) if tail else "}")
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
