"""The proposal cache's embedding blobs: an engine's tensors as one fp16 byte string and back.

``shape`` (the ``embeddings`` table's column) is a list for a single ``1×256×64×64`` embedding
(SAM) and an object ``{name: shape}`` for several (SAM 2, HQ-SAM); see :mod:`.cache`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError


def pack_embedding(arrays: dict[str, np.ndarray]) -> tuple[bytes, Any]:
    """fp16 bytes of the arrays in order, and the ``shape`` column (list for one, object for several)."""
    parts = {k: np.ascontiguousarray(v, dtype=np.float16) for k, v in arrays.items()}
    blob = b"".join(p.tobytes() for p in parts.values())
    if list(parts) == ["image_embed"]:
        return blob, list(parts["image_embed"].shape)
    return blob, {k: list(p.shape) for k, p in parts.items()}


def unpack_embedding(blob: bytes, shape: Any) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_embedding`: float32 arrays by name."""
    shapes = {"image_embed": shape} if isinstance(shape, list) else shape
    flat = np.frombuffer(blob, dtype=np.float16)
    out, at = {}, 0
    for name, shp in shapes.items():
        n = int(np.prod(shp))
        out[name] = flat[at:at + n].reshape(shp).astype(np.float32)
        at += n
    if at != flat.size:
        raise InputError(f"a cached embedding holds {flat.size} values, its shapes {shapes} say {at}")
    return out
