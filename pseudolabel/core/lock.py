"""One writer per output: an advisory lock file beside it, released by the kernel if the writer dies.

``OUT.lock`` (beside the file or folder ``OUT``) is locked with ``flock`` and holds the writer's
process id, host and start time. A second writer finds it locked and stops with one sentence
naming the file and the process id; a lock left by a killed process is not held by anyone (the
kernel drops ``flock`` locks with their process), so the next run simply takes it over. The file
is removed when its writer finishes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from .errors import InputError

try:  # POSIX; elsewhere the lock is a no-op
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of an output file or folder: ``OUT`` → ``OUT.lock`` beside it."""
    target = Path(target)
    return target.with_name(target.name + ".lock")


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"process {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def output_lock(target: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of ``target`` for the body; see the module docstring.

    Raises:
        InputError: another live process holds it (the sentence names the lock file and its pid).
    """
    path = lock_path(target)
    if fcntl is None:
        yield path
        return
    created = []  # folders made for the lock: removed again if the run leaves them empty
    folder = path.parent
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(f"{Path(target)} is being written by {_holder(path)}: lock file {path}; "
                             "wait for that run to finish or stop it") from None
        # the file may have been removed by its previous holder between our open and flock
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        os.ftruncate(fd, 0)
        os.write(fd, record.encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # still holding the lock: nobody else can be inside
        os.close(fd)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty
