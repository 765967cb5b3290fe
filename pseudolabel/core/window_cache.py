"""Embeddings per window in the proposal cache: `sap proposals --save-embeddings` on an image
cut into windows (:mod:`.windows`) stores the embedding of each window it encoded, and
`sap refine --embeddings` reads them back for the masks whose window is one of them.

Table ``window_embeddings``: image id, the window ``x0, y0, x1, y1`` (XYXY image pixels, right and
bottom exclusive), the engine's tensors in fp16 as :func:`.cache.pack_embedding` packs them, and
where the window lies in the engine's frame (``input_h, input_w``). An image's rows are replaced
in the same transaction as its proposals.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import numpy as np

from .windows import Window

SCHEMA = """
CREATE TABLE IF NOT EXISTS window_embeddings (
    image_id INTEGER NOT NULL, x0 INTEGER NOT NULL, y0 INTEGER NOT NULL, x1 INTEGER NOT NULL,
    y1 INTEGER NOT NULL, data BLOB NOT NULL, shape TEXT NOT NULL, input_h INTEGER, input_w INTEGER,
    PRIMARY KEY (image_id, x0, y0, x1, y1));
"""


def write_window_embeddings(conn: sqlite3.Connection, image_id: int,
                            items: list[tuple[Window, dict[str, np.ndarray], tuple[int, int]]]) -> None:
    """Replace the image's window embeddings by ``items`` (``(window, {name: array}, input (h, w))``);
    call inside the image's transaction (:meth:`.cache.ShardWriter.write_image`'s ``extra``)."""
    from .cache import pack_embedding

    conn.execute(SCHEMA)
    conn.execute("DELETE FROM window_embeddings WHERE image_id = ?", (image_id,))
    for win, arrays, input_hw in items:
        blob, shape = pack_embedding(arrays)
        conn.execute("INSERT INTO window_embeddings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (image_id, *win.as_list(), blob, json.dumps(shape), *input_hw))


def read_window_embeddings(conns: list[sqlite3.Connection], image_id: int
                           ) -> dict[Window, tuple[dict[str, np.ndarray], tuple[int, int]]]:
    """The stored windows of an image: ``{window: ({name: float32 array}, input (h, w))}``
    (empty for a cache without the table or without windows for it)."""
    from .cache import unpack_embedding

    out: dict[Window, Any] = {}
    for conn in conns:
        try:
            rows = conn.execute("SELECT x0, y0, x1, y1, data, shape, input_h, input_w FROM window_embeddings "
                                "WHERE image_id = ?", (image_id,)).fetchall()
        except sqlite3.OperationalError:  # a cache made before windows, or without any
            continue
        for x0, y0, x1, y1, data, shape, ih, iw in rows:
            out[Window(x0, y0, x1, y1)] = (unpack_embedding(data, json.loads(shape)), (ih, iw))
    return out
