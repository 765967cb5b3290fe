"""The proposal bag of one annotated point: what `sap select` chooses from.

A bag holds the K SAM proposals made from one point (K = 3 per prompt kind: 3 for the point
prompt alone, 6 for SAPNet's point + box-around-point). Proposals keep the order in which they
were made: kind by kind in the configured order, and by SAM's output index (``rank``) within a
kind, so the first three are the point prompt's (SAPNet's box mining looks only at those).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .rle import RLE


@dataclass
class Bag:
    """The proposals of one point.

    Attributes:
        ann_id: the point's annotation id (kept from the input file).
        image_id: its image id.
        category_id: its category id.
        point: ``(x, y)`` in original-image pixels.
        boxes: ``K×4`` float XYXY boxes of the proposals (original-image pixels).
        rles: K compressed RLEs (``counts`` as str) at the original image size.
        scores: ``K`` SAM predicted IoUs.
        kinds: K prompt kind names (``"point"``, ``"point_box"``, ...).
        ranks: ``K`` ints, SAM's multimask output index within the kind (0, 1, 2).
        stability: ``K`` stability scores (``nan`` where unknown).
        true_box: the ``true_bbox`` of an official SAPNet file as XYXY (original pixels), whose
            centre the official code uses as the point; None when the source has none.
    """

    ann_id: int
    image_id: int
    category_id: int
    point: tuple[float, float]
    boxes: np.ndarray
    rles: list[RLE]
    scores: np.ndarray
    kinds: list[str]
    ranks: np.ndarray
    stability: np.ndarray = field(default=None)  # type: ignore[assignment]
    true_box: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.ranks = np.asarray(self.ranks, dtype=np.int64).reshape(-1)
        k = len(self.rles)
        if self.stability is None:
            self.stability = np.full(k, np.nan)
        self.stability = np.asarray(self.stability, dtype=np.float64).reshape(-1)
        if not (len(self.boxes) == len(self.scores) == len(self.kinds) == len(self.ranks)
                == len(self.stability) == k):
            raise ValueError(f"bag of annotation {self.ann_id}: proposal fields differ in length")

    def __len__(self) -> int:
        return len(self.rles)
