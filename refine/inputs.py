"""What the refine stage reads: which coarse masks are usable, and where image embeddings come from.

:func:`classify_segmentation` sorts a COCO ``segmentation`` into a usable RLE or a reason
(a key of :data:`BAD_MASK_REASONS`); :class:`EmbeddingSource` gives each image's SAM embedding
from a `sap proposals --save-embeddings` cache when it holds one for this engine, checkpoint and
image content, else from the encoder. A cache of another engine is refused.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pseudolabel.core.cache import CacheReader, load_embedding
from pseudolabel.core.errors import ImageError, InputError
from pseudolabel.core.images import file_sha256, load_image_rgb
from pseudolabel.core.progress import logger
from pseudolabel.core.rle import rle_area, segmentation_to_rle
from pseudolabel.core.engines.base import ImageEmbedding
from pseudolabel.core.tiled import open_large_image
from pseudolabel.core.window_cache import read_window_embeddings
from pseudolabel.core.windows import Window, WindowRule, window_pixels

from .windowed import WindowedImage

BAD_MASK_REASONS = {
    "size": "whose RLE size disagrees with the image size",
    "polygon": "whose polygon has fewer than 3 points",
    "empty": "whose mask is empty (or lies outside the image)",
    "malformed": "whose segmentation is malformed",
}



def classify_segmentation(seg: Any, height: int, width: int) -> tuple[dict | None, str | None]:
    """``(rle, None)`` for a usable mask, ``(None, reason)`` (a key of :data:`BAD_MASK_REASONS`)
    otherwise; ``(None, None)`` when there is no segmentation at all."""
    if seg is None or (isinstance(seg, list) and len(seg) == 0):
        return None, None
    if isinstance(seg, dict) and "size" in seg:
        try:
            if [int(v) for v in seg["size"]] != [height, width]:
                return None, "size"
        except (TypeError, ValueError):
            return None, "malformed"
    if isinstance(seg, list) and any(isinstance(p, (list, tuple)) and len(p) < 6 for p in seg):
        return None, "polygon"
    try:
        rle = segmentation_to_rle(seg, height, width)
        area = rle_area(rle)
    except (InputError, ValueError, TypeError, KeyError):
        return None, "malformed"
    return (rle, None) if area > 0 else (None, "empty")


class EmbeddingSource:
    """Image embeddings from a `sap proposals --save-embeddings` cache, else from the encoder."""

    def __init__(self, engine, cache_dir: str | None, fp16_fresh: bool = True, rule: WindowRule | None = None) -> None:
        self.fp16_fresh = fp16_fresh
        self.rule = rule
        self.engine = engine
        self.cache_dir = cache_dir
        self.from_cache = 0
        self.encoded = 0
        self.reader = None
        if cache_dir is not None:
            with CacheReader(cache_dir) as reader:  # raises InputError when it is no cache
                cfg = reader.config
            if cfg.get("engine") != engine.name:
                raise InputError(f"the cache {cache_dir} holds embeddings of engine {cfg.get('engine')}, not "
                                 f"{engine.name}; pass --engine {cfg.get('engine')} or drop --embeddings")
            if cfg.get("checkpoint_sha256") != engine.checkpoint_id:
                logger.warning("the cache %s holds embeddings of %s checkpoint %s, not %s: "
                               "every image will be encoded", cache_dir, engine.name,
                               str(cfg.get("checkpoint_sha256"))[:12], engine.checkpoint_id[:12])
            if not cfg.get("save_embeddings", True):
                logger.warning("the cache %s was made without --save-embeddings", cache_dir)
            self.reader = CacheReader(cache_dir)  # kept open: one embedding query per image

    def get(self, image: dict, path: Path):
        """The embedding of ``image`` (its COCO record) whose file is ``path``; a
        :class:`~refine.windowed.WindowedImage` (its windows encoded when asked) for an image
        the window rule applies to."""
        wh = (image["width"], image["height"])
        if self.rule is not None and self.rule.applies(wh[::-1]):
            pixels = open_large_image(path, wh)
            pixels = pixels if pixels is not None else load_image_rgb(path, wh)
            stored = self._stored_windows(image, path)
            return WindowedImage(wh[::-1], self.rule, functools.partial(self._window, pixels, stored), tuple(stored))
        if self.cache_dir is not None:
            if not path.is_file():
                raise ImageError(f"image file {path} is missing")
            emb = load_embedding(self.reader, image["id"], file_sha256(path), self.engine.name,
                                 self.engine.checkpoint_id, device=self.engine.device)
            if emb is not None and tuple(emb.original_size) == (image["height"], image["width"]):
                self.from_cache += 1
                return emb
        return self._encode(load_image_rgb(path, wh))

    def _stored_windows(self, image: dict, path: Path) -> dict:
        """The window embeddings the cache holds for this image file (same checkpoint, same
        content), ``{window: ({name: array}, input (h, w))}``."""
        if self.reader is None or self.reader.config.get("checkpoint_sha256") != self.engine.checkpoint_id:
            return {}
        sha = [r[0] for r in self.reader.query("SELECT sha256 FROM images WHERE image_id = ?", (image["id"],))]
        if not sha or not path.is_file() or sha[0] != file_sha256(path):
            return {}
        return read_window_embeddings(self.reader.conns, image["id"])

    def _window(self, pixels, stored: dict, window: Window):
        """A window's embedding: the cache's when it holds that window, else the encoder's."""
        if window in stored:
            arrays, input_hw = stored[window]
            self.from_cache += 1
            tensors = {k: torch.from_numpy(v).to(self.engine.device) for k, v in arrays.items()}
            return ImageEmbedding.from_tensors(tensors, input_hw, window.hw)
        return self._encode(pixels, window)

    def _encode(self, pixels, window: Window | None = None):
        """The encoder's embedding of ``window`` of an image (None: all of it)."""
        self.encoded += 1
        emb = self.engine.encode(np.ascontiguousarray(window_pixels(pixels, window)))
        if self.fp16_fresh:
            # The cache keeps embeddings in fp16; passing fresh ones through fp16 too makes a
            # refine run give the same masks whether or not it found the embedding in a cache
            # (rule fp16_embeddings; the official code keeps them fp32).
            emb = emb.through_fp16()
        return emb

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
