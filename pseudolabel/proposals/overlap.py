"""The CPU work around SAM's encoder, taken off its path: images read ahead, masks encoded behind.

:class:`Prefetch` reads (decodes and hashes) the next images on background threads while the
encoder works on the current ones. :class:`RleWorker` RLE-encodes each decoded chunk's masks on a
background thread while the main thread goes on to the next chunk and the next image. Both keep
order and content: a run with them writes the same cache as a run without (the tests compare).
JPEG decoding (PIL) and the tensor work of the main thread release the GIL, so on a GPU machine
the encoder never waits for them; on a CPU that the encoder already fills they gain little.
"""

from __future__ import annotations

import collections
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from pseudolabel.core.errors import ImageError
from pseudolabel.core.rle import encode_masks

T = TypeVar("T")
V = TypeVar("V")
_END = object()


class _Background:
    """What both share: an optional thread pool (``self.pool``, None = work inline), shut down
    by :meth:`close` or at the end of a ``with`` block."""

    pool: ThreadPoolExecutor | None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Prefetch(_Background):
    """Iterate ``items`` as ``(item, load(item), error)``, loading up to ``depth`` items ahead on
    ``workers`` threads; ``error`` is the :class:`ImageError` that ``load`` raised (other
    exceptions propagate). ``depth=0`` loads in the caller's thread, one item at a time."""

    def __init__(self, items: Iterable[T], load: Callable[[T], V], depth: int = 2, workers: int = 1) -> None:
        self.items, self.load, self.depth = items, load, depth
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="sap-read") if depth > 0 else None

    def _call(self, item: T) -> tuple[V | None, ImageError | None]:
        try:
            return self.load(item), None
        except ImageError as e:
            return None, e

    def __iter__(self) -> Iterator[tuple[T, V | None, ImageError | None]]:
        if self.pool is None:
            for item in self.items:
                yield (item, *self._call(item))
            return
        source = iter(self.items)
        queue: collections.deque = collections.deque()
        while True:
            while len(queue) < self.depth and (item := next(source, _END)) is not _END:
                queue.append((item, self.pool.submit(self._call, item)))
            if not queue:
                return
            item, future = queue.popleft()
            yield (item, *future.result())


class RleWorker(_Background):
    """RLE-encodes ``N×H×W`` mask stacks in submission order, on one background thread when
    ``enabled`` (inline otherwise), holding at most ``budget`` mask pixels in flight: a submit
    beyond it waits for the oldest job."""

    def __init__(self, enabled: bool = True, budget: int = 2 ** 27) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="sap-rle") if enabled else None
        self.budget = budget
        self.inflight: collections.deque[tuple[Future, int]] = collections.deque()
        self.pixels = 0

    def submit(self, masks: np.ndarray, encode: Callable[[np.ndarray], list] | None = None) -> Future:
        """Queue one stack; the future gives :func:`encode_masks`'s list of RLEs (or ``encode``'s,
        e.g. a window's masks placed in the whole image)."""
        encode = encode or encode_masks
        if self.pool is None:
            done: Future = Future()
            done.set_result(encode(masks))
            return done
        while self.inflight and (self.pixels + masks.size > self.budget or self.inflight[0][0].done()):
            oldest, size = self.inflight.popleft()
            oldest.result()
            self.pixels -= size
        future = self.pool.submit(encode, masks)
        self.inflight.append((future, masks.size))
        self.pixels += masks.size
        return future
