"""Decoding one image's points (or one window's) into proposal rows, chunk by chunk.

:func:`decode_chunks` runs the configured prompt kinds on chunks of points against one
embedding, upsamples the logits to the (window's) original size and hands the masks to an
:class:`~.overlap.RleWorker`; :class:`ChunkProposals` turns a chunk into ``proposals`` table rows.
"""

from __future__ import annotations

import dataclasses
import functools
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from pseudolabel.core.device import release_freed_memory
from pseudolabel.core.engines.base import ImageEmbedding, PromptEngine, stability_score
from pseudolabel.core.points import PointAnn
from pseudolabel.core.windows import Window, paste_rles
from .overlap import RleWorker
from .prompt_kinds import CLICK_MODES, DEFAULT_CLICKS, PROMPT_KINDS, KindResult, click_prompt, mask_boxes_xyxy

MASK_PIXEL_BUDGET = 2 ** 26  # full-resolution mask pixels held at once (one chunk)
TRIM_PIXELS = 2 ** 24  # after a chunk of this many mask pixels or more, the freed heap goes back to the system


@dataclass
class ChunkProposals:
    """One prompt kind's proposals for one chunk of points, RLEs possibly still being encoded."""

    points: list[PointAnn]
    kind_index: int
    kind: str
    rles: Future  # → list of B·C RLEs, point-major
    hw: tuple[int, int]
    iou: np.ndarray  # B×C
    stability: np.ndarray  # B×C
    boxes: np.ndarray  # B×C×4 XYXY
    areas: np.ndarray  # B×C
    clicks: np.ndarray  # B: clicks in each point's prompt

    def rows(self) -> list[tuple]:
        """``proposals`` table rows (waits for the RLEs)."""
        rles = self.rles.result()
        (h, w), c = self.hw, self.iou.shape[1]
        rows = []
        for b, p in enumerate(self.points):
            for r in range(c):
                x1, y1, x2, y2 = (float(v) for v in self.boxes[b, r])
                rows.append((p.ann_id, p.image_id, self.kind_index, self.kind, r, rles[b * c + r]["counts"], h, w,
                             float(self.iou[b, r]), float(self.stability[b, r]), x1, y1, x2 - x1, y2 - y1,
                             int(self.areas[b, r]), int(self.clicks[b])))
        return rows


def _click_groups(points: list[PointAnn], clicks: str, chunk: int) -> list[list[PointAnn]]:
    """Chunks of at most ``chunk`` points, each of points with the same number of clicks, so no
    prompt carries padding and a point's masks do not depend on its neighbours' clicks."""
    by_count: dict[int, list[PointAnn]] = {}
    for p in points:
        by_count.setdefault(len(CLICK_MODES[clicks](p)), []).append(p)
    return [group[i:i + chunk] for _, group in sorted(by_count.items()) for i in range(0, len(group), chunk)]


def decode_chunks(engine: PromptEngine, emb: ImageEmbedding, points: list[PointAnn], kinds: tuple[str, ...],
                  points_per_batch: int, rle: RleWorker, window: Window | None = None,
                  image_hw: tuple[int, int] | None = None, clicks: str = DEFAULT_CLICKS) -> list[ChunkProposals]:
    """Decode one image's (or one window's) points; their masks go to ``rle`` chunk by chunk.

    Chunks of at most ``points_per_batch`` points with the same number of clicks (fewer on large
    images, so a chunk's full-resolution masks stay under :data:`MASK_PIXEL_BUDGET` pixels) go
    through the decoder once per prompt kind, each point's clicks (``clicks``: a name of
    :data:`~.prompt_kinds.CLICK_MODES`) in one prompt. The logits are upsampled transposed (``B×C×W×H``, the same sampling)
    so the masks are already in the column-major order COCO's RLE reads. With a ``window``
    (``emb`` encodes that part of an ``image_hw`` image) the points are shifted into it and the
    masks and boxes placed back: the proposals are the image's, at its full size.
    """
    h, w = emb.original_size
    (x0, y0), full_hw = (window.origin, image_hw) if window is not None else ((0, 0), (h, w))
    place = functools.partial(paste_rles, origin=(x0, y0), hw=full_hw) if window is not None else None
    emb_t = dataclasses.replace(emb, input_size=emb.input_size[::-1], original_size=(w, h))
    chunk = max(1, min(points_per_batch, MASK_PIXEL_BUDGET // (3 * h * w)))
    out: list[ChunkProposals] = []
    for pts in _click_groups(points, clicks, chunk):
        prompt = click_prompt(pts, clicks)
        prompt.coords -= [x0, y0]
        prompt.first -= [x0, y0]
        earlier: dict[str, KindResult] = {}
        for kind_index, kind in enumerate(kinds):
            args = PROMPT_KINDS[kind](prompt, earlier, (h, w))
            low_res, iou = engine.decode(emb, multimask=True, **args)
            logits_t = engine.upscale(low_res.transpose(-1, -2), emb_t, threshold=None)  # B×C×W×H
            masks_t = logits_t > 0
            stab = stability_score(logits_t)
            del logits_t
            masks = masks_t.transpose(-1, -2)  # B×C×H×W view
            boxes = mask_boxes_xyxy(masks)
            earlier[kind] = KindResult(masks, iou, boxes)
            future = rle.submit(masks.flatten(0, 1).cpu().numpy(), encode=place)
            areas = masks_t.flatten(2).sum(-1).cpu().numpy()
            boxes_np = boxes.cpu().numpy() + np.where(areas[..., None] > 0, [x0, y0, x0, y0], 0)
            out.append(ChunkProposals(pts, kind_index, kind, future, full_hw, iou.cpu().numpy(),
                                      stab.cpu().numpy(), boxes_np, areas, prompt.counts))
        del earlier
        if 3 * len(pts) * h * w >= TRIM_PIXELS:
            release_freed_memory()
    return out


def image_proposals(engine: PromptEngine, emb: ImageEmbedding, points: list[PointAnn],
                    kinds: tuple[str, ...], points_per_batch: int, clicks: str = DEFAULT_CLICKS) -> list[tuple]:
    """All proposals of one image's points, as ``proposals`` table rows (see :func:`decode_chunks`)."""
    with RleWorker(enabled=False) as rle:
        return [row for c in decode_chunks(engine, emb, points, kinds, points_per_batch, rle, clicks=clicks)
                for row in c.rows()]
