"""SAMRefiner's per-image loop: prompts from the coarse masks → SAM → better masks, iterated.

For one image: the embedding is computed once (or read from a cache); each iteration builds the
enabled prompt kinds for every object still changing, runs the decoder on them in batches of
``chunk`` objects, keeps SAM's multimask output with the highest predicted IoU (logits > 0) and
re-derives the prompts from that mask. An object leaves the loop early when its mask stops
changing (the next iteration would repeat it exactly) or when SAM returns an empty mask (its
previous mask is kept).

Prompt kinds are chosen by name from :data:`PROMPT_KINDS` and always built in the registry's
order (``point``, ``box``, ``mask``) because the mask prompt depends on whether CEBox grew the
box. Any non-empty subset reproduces the paper's prompt ablation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from pseudolabel.core.errors import InputError
from pseudolabel.core.sam import default_prompt_batch

from .cebox import CeBoxParams, FeatureSampler, elastic_box
from .mask_prompt import mask_prompt
from .prompts import NEGATIVE_FALLBACKS, interior_distance_crop, negative_point, positive_point


@dataclass
class RefineConfig:
    """Every setting of `sap refine` (defaults follow ALGORITHMS.md §4).

    Algorithm:
        iters: refinement iterations (code default 5).
        prompts: enabled prompt kinds, names of :data:`PROMPT_KINDS`.
        negative_point: add the distance-guided negative point to the point prompt.
        negative_fallback: when the mask fills its box: ``omit`` the negative point (ALGORITHMS.md)
            or put it at pixel (0, 0) (``origin``, the public code).
        cebox_margin: CEBox growth margin (paper 0.1; 0 = off, the public code's default).
        cebox_threshold: cosine similarity counted as "similar" (0.5).
        strength: mask-prompt amplitude (code 30; paper 15).
        gamma: mask-prompt span (4).
        grown_strength: amplitude used instead of ``strength`` for an object whose box CEBox
            grew in this iteration (code: 1, so SAM may grow the mask).
        multimask: ask SAM for 3 masks and keep the best predicted IoU (else its single output).
    Engine and run:
        model, checkpoint, precision, device: the SAM engine (see ``pseudolabel.core.sam``; precision
            ``auto`` as in `sap proposals`).
        chunk: objects per decoder call; 0 = :func:`pseudolabel.core.sam.default_prompt_batch` (measured
            per device: 4 on a CPU, 64 on a GPU).
        adapter: SAMRefiner++ LoRA file from `sap refine adapt`, or None.
        embeddings: a `sap proposals --save-embeddings` cache folder, or None.
    """

    iters: int = 5
    prompts: tuple[str, ...] = ("point", "box", "mask")
    negative_point: bool = True
    negative_fallback: str = "omit"
    cebox_margin: float = 0.1
    cebox_threshold: float = 0.5
    strength: float = 30.0
    gamma: float = 4.0
    grown_strength: float = 1.0
    multimask: bool = True
    model: str = "vit_h"
    checkpoint: Optional[str] = None
    precision: str = "auto"
    device: Optional[str] = None
    chunk: int = 0
    adapter: Optional[str] = None
    embeddings: Optional[str] = None

    def __post_init__(self) -> None:
        self.prompts = parse_prompts(self.prompts)
        if self.iters < 1:
            raise InputError("--iters must be at least 1")
        if self.negative_fallback not in NEGATIVE_FALLBACKS:
            raise InputError(f"negative_fallback must be one of {', '.join(NEGATIVE_FALLBACKS)}")
        if self.chunk < 0:
            raise InputError("chunk must be at least 1 (or 0 for the device's default)")
        if self.gamma <= 0:
            raise InputError("--gamma must be positive")

    @property
    def cebox(self) -> CeBoxParams:
        return CeBoxParams(margin=self.cebox_margin, threshold=self.cebox_threshold)

    def result_settings(self) -> dict:
        """The settings that shape the refined masks (not device, chunking or the cache path)."""
        from pseudolabel.core.config import to_jsonable

        d = to_jsonable(self)
        for k in ("device", "chunk", "embeddings"):
            d.pop(k, None)
        return d


def create_engine(cfg: RefineConfig):
    """The :class:`pseudolabel.core.sam.SamEngine` the settings ask for."""
    from pseudolabel.core.device import pick_device
    from pseudolabel.core.sam import SamEngine, resolve_precision

    device = pick_device(cfg.device)
    return SamEngine.create(cfg.model, cfg.checkpoint, str(device), resolve_precision(cfg.precision, device))


# ---- prompt kinds ------------------------------------------------------------------------------

@dataclass
class PromptState:
    """The objects of one decoder call and what the prompt kinds derived for them.

    Attributes:
        masks: ``B×H×W`` bool current masks (non-empty).
        cfg: the settings.
        sampler: the image's features for CEBox (None when CEBox is off).
        boxes: ``B×4`` tight XYXY boxes (exclusive right/bottom).
        grew: ``(B,)`` bool, set by the ``box`` kind: whether CEBox moved a side.
        dist_crops: per object, the interior distance map of its tight-box crop (shared by the
            point and mask kinds).
    """

    masks: np.ndarray
    cfg: RefineConfig
    sampler: FeatureSampler | None = None
    boxes: np.ndarray = field(init=False)
    grew: np.ndarray = field(init=False)
    dist_crops: list = field(init=False)

    def __post_init__(self) -> None:
        self.dist_crops = [interior_distance_crop(m) for m in self.masks]
        self.boxes = np.array([[x0, y0, x1, y1] for _, (y0, y1, x0, x1) in self.dist_crops],
                              dtype=np.float64).reshape(-1, 4)
        self.grew = np.zeros(len(self.masks), dtype=bool)


def build_points(state: PromptState) -> dict:
    """Positive point (and negative point) per object: ``point_coords`` ``B×K×2`` (x, y),
    ``point_labels`` ``B×K`` (1, 0, or -1 where an object has no negative point)."""
    cfg = state.cfg
    k = 2 if cfg.negative_point else 1
    coords = np.zeros((len(state.masks), k, 2), dtype=np.float64)
    labels = np.ones((len(state.masks), k), dtype=np.int64)
    for i, m in enumerate(state.masks):
        coords[i, 0] = positive_point(m, state.dist_crops[i])
        if cfg.negative_point:
            neg = negative_point(m, state.boxes[i], fallback=cfg.negative_fallback)
            if neg is None:
                labels[i, 1] = -1  # SAM's padding label: "not a point"
            else:
                coords[i, 1] = neg
                labels[i, 1] = 0
    return {"point_coords": coords, "point_labels": labels}


def build_box(state: PromptState) -> dict:
    """Tight box per object, grown by one CEBox step where enabled: ``boxes`` ``B×4`` XYXY."""
    boxes = state.boxes.copy()
    if state.sampler is not None and state.cfg.cebox.enabled:
        for i, m in enumerate(state.masks):
            query = state.sampler.query(m)
            boxes[i], grew = elastic_box(boxes[i], query, state.sampler, state.cfg.cebox)
            state.grew[i] = grew.any()
    return {"boxes": boxes}


def build_mask(state: PromptState, input_size: tuple[int, int]) -> dict:
    """Gaussian-style mask prompt per object: ``mask_input`` ``B×1×256×256`` logits."""
    cfg = state.cfg
    strength = np.where(state.grew, cfg.grown_strength, cfg.strength)
    return {"mask_input": mask_prompt(state.masks, input_size, strength, cfg.gamma, state.dist_crops)}


PromptFn = Callable[..., dict]
PROMPT_KINDS: dict[str, PromptFn] = {"point": build_points, "box": build_box, "mask": build_mask}


def parse_prompts(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"point,box"`` → ``("point", "box")`` in registry order, checked."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise InputError("--prompts needs at least one of " + ", ".join(PROMPT_KINDS))
    unknown = [n for n in names if n not in PROMPT_KINDS]
    if unknown:
        raise InputError(f"unknown prompt kind(s) {', '.join(unknown)}; choose from {', '.join(PROMPT_KINDS)}")
    return tuple(k for k in PROMPT_KINDS if k in names)


def build_prompts(state: PromptState, input_size: tuple[int, int]) -> dict:
    """Keyword arguments of ``SamEngine.decode`` for the enabled prompt kinds."""
    args: dict = {}
    for name in state.cfg.prompts:
        fn = PROMPT_KINDS[name]
        args.update(fn(state, input_size) if name == "mask" else fn(state))
    return args


# ---- the loop ----------------------------------------------------------------------------------

@dataclass
class RefineResult:
    """Refined masks of one image.

    Attributes:
        masks: ``N×H×W`` bool.
        scores: ``(N,)`` SAM's predicted IoU of each kept mask (NaN: SAM never gave a non-empty
            mask, the coarse mask is kept).
        iterations: ``(N,)`` decoder iterations each object went through.
        kept_coarse: ``(N,)`` bool, the coarse mask was kept unchanged because SAM returned an
            empty mask at the first iteration.
    """

    masks: np.ndarray
    scores: np.ndarray
    iterations: np.ndarray
    kept_coarse: np.ndarray


def needs_features(cfg: RefineConfig) -> bool:
    return "box" in cfg.prompts and cfg.cebox.enabled


def refine_masks(engine, emb, masks: np.ndarray, cfg: RefineConfig) -> RefineResult:
    """Refine the ``N`` coarse masks of one image.

    Args:
        engine: a :class:`pseudolabel.core.sam.SamEngine`.
        emb: the image's :class:`pseudolabel.core.sam.ImageEmbedding`.
        masks: ``N×H×W`` coarse masks at the original image size, each non-empty.
        cfg: settings.

    Returns:
        A :class:`RefineResult`.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(emb.original_size):
        raise ValueError(f"masks must be N×{emb.original_size[0]}×{emb.original_size[1]}, got {masks.shape}")
    n = len(masks)
    current = masks.copy()
    scores = np.full(n, np.nan)
    iterations = np.zeros(n, dtype=np.int64)
    active = masks.reshape(n, -1).any(axis=1)
    if not active.all():
        raise ValueError("refine_masks got an empty mask")
    sampler = FeatureSampler(emb.features, emb.original_size, emb.input_size) if needs_features(cfg) else None
    for _ in range(cfg.iters):
        todo = np.flatnonzero(active)
        if todo.size == 0:
            break
        chunk = cfg.chunk or default_prompt_batch(engine.device)
        for start in range(0, todo.size, chunk):
            idx = todo[start:start + chunk]
            state = PromptState(current[idx], cfg, sampler)
            low_res, iou = engine.decode(emb, **build_prompts(state, emb.input_size), multimask=cfg.multimask)
            best = iou.argmax(dim=1)
            rows = torch.arange(len(idx), device=low_res.device)
            new = engine.upscale(low_res[rows, best][:, None], emb)[:, 0].cpu().numpy()
            best_iou = iou[rows, best].float().cpu().numpy()
            for j, obj in enumerate(idx):
                iterations[obj] += 1
                if not new[j].any():
                    active[obj] = False  # keep the previous mask
                elif np.array_equal(new[j], current[obj]):
                    scores[obj] = best_iou[j]
                    active[obj] = False  # converged: the next iteration would repeat this one
                else:
                    current[obj] = new[j]
                    scores[obj] = best_iou[j]
    kept = np.isnan(scores)
    return RefineResult(current, scores, iterations, kept)
