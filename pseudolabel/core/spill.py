"""A list kept on disk: items pickled into one temporary file, only their offsets in memory.

For data a stage must keep for random access but need not hold, such as the training records'
MPS alternatives (many masks per instance, read again only when their image is drawn). Memory per
item is 16 bytes (an offset and a length), whatever the item's size.

The file is reopened by each process that reads it (forked or spawned DataLoader workers, DDP
ranks), read with ``os.pread`` (no shared file position), and deleted by the process that made it
when the list is collected or the interpreter exits.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import weakref
from array import array
from typing import Any


def _remove(path: str, owner: int, writer: Any) -> None:
    writer.close()
    if os.getpid() == owner:  # never a worker that inherited the object
        try:
            os.unlink(path)
        except OSError:
            pass


class DiskList:
    """Append-only list of picklable items stored in a temporary file (``dir``: where; default the
    system's temporary folder)."""

    def __init__(self, dir: str | os.PathLike | None = None) -> None:
        fd, self.path = tempfile.mkstemp(prefix="sap-spill.", suffix=".pkl", dir=dir)
        os.close(fd)
        self._offsets, self._lengths = array("q"), array("q")
        self._end = 0
        self._writer = open(self.path, "ab", buffering=0)  # unbuffered: a forked reader inherits nothing unwritten
        self._fd: int | None = None
        self._pid = -1
        self._finalizer = weakref.finalize(self, _remove, self.path, os.getpid(), self._writer)

    def append(self, item: Any) -> int:
        """Store ``item``; returns its index."""
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(data)
        self._offsets.append(self._end)
        self._lengths.append(len(data))
        self._end += len(data)
        return len(self._offsets) - 1

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> Any:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return pickle.loads(os.pread(self._fd, self._lengths[i], self._offsets[i]))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_writer=None, _fd=None, _pid=-1, _finalizer=None)  # the receiving process opens its own
        return state

    @property
    def nbytes(self) -> int:
        """Bytes on disk."""
        return self._end
