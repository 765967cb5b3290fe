"""SAMRefiner's per-image loop: prompts from the coarse masks → SAM → better masks, iterated.

For one image: the embedding is computed once (or read from a cache); each iteration builds the
enabled prompt kinds for every object still changing, runs the decoder on them in batches of
``chunk`` objects, keeps SAM's multimask output with the highest predicted IoU (logits > 0) and
re-derives the prompts from that mask. An object leaves the loop early when its mask stops
changing (the next iteration would repeat it exactly) or when SAM returns an empty mask (its
previous mask is kept; the official code would go on with the empty mask, see docs/fidelity.md).

Prompt kinds are chosen by name from :data:`PROMPT_KINDS` and always built in the registry's
order (``point``, ``box``, ``mask``) because the mask prompt depends on whether CEBox grew the
box. Any non-empty subset reproduces the paper's prompt ablation. The rules that differ between
the official code and the paper come from :mod:`refine.reference` (``reference`` plus per-rule
overrides).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from pseudolabel.core.errors import InputError
from pseudolabel.core.engines.base import default_prompt_batch
from pseudolabel.core.engines.registry import DEFAULT_ENGINE, engine_option
from pseudolabel.core.windows import window_rule

from .cebox import CeBoxParams, FeatureSampler, elastic_box
from .cebox_official import OfficialFeatures, official_elastic_box
from .distance import distance_maps
from .mask_prompt import mask_prompt
from .prompts import negative_point, positive_point
from .reference import REFERENCES, Rules, resolve_rules


@dataclass
class RefineConfig:
    """Every setting of `sap refine`.

    Algorithm:
        reference: ``official`` (linyq2117/SAMRefiner@0b2db8c, the default) or ``paper``; picks
            the rules of :mod:`refine.reference`.
        distance, negative_region, negative_fallback, mask_outside, strength, cebox_margin,
            cebox_rule, stm, upscale, fp16_embeddings: per-rule overrides (None = the
            reference's; see :class:`refine.reference.Rules`).
        iters: refinement iterations (5 in paper and code).
        prompts: enabled prompt kinds, names of :data:`PROMPT_KINDS`.
        negative_point: add the distance-guided negative point to the point prompt.
        cebox_threshold: cosine similarity counted as "similar" (0.5).
        gamma: mask-prompt span (4).
        grown_strength: amplitude used instead of ``strength`` for an object whose box CEBox
            grew in this iteration (code: 1, so SAM may grow the mask; decided per object).
        multimask: ask SAM for 3 masks and keep the best predicted IoU (else its single output).
    Engine and run:
        engine, checkpoint, precision, device: the engine (a name of
            ``pseudolabel.core.engines.registry.ENGINES``, default ``sam_vit_h``; ``model`` is the
            deprecated SAM type, ``vit_b`` = ``sam_vit_b``); precision ``auto`` as in `sap proposals`.
        chunk: objects per decoder call; 0 = :func:`pseudolabel.core.engines.base.default_prompt_batch` (measured
            per device: 4 on a CPU, 64 on a GPU).
        adapter: SAMRefiner++ LoRA file from `sap refine adapt`, or None.
        embeddings: a `sap proposals --save-embeddings` cache folder, or None.
        windows, window_scale: ``auto | off | PIXELS`` and the scale: an image the rule applies
            to (:mod:`pseudolabel.core.windows`, as `sap proposals`) is refined in windows
            around its masks (:mod:`refine.windowed`).
    """

    reference: str = "official"
    distance: Optional[str] = None
    negative_region: Optional[str] = None
    negative_fallback: Optional[str] = None
    mask_outside: Optional[str] = None
    strength: Optional[float] = None
    cebox_margin: Optional[float] = None
    cebox_rule: Optional[str] = None
    stm: Optional[str] = None
    upscale: Optional[str] = None
    fp16_embeddings: Optional[bool] = None
    iters: int = 5
    prompts: tuple[str, ...] = ("point", "box", "mask")
    negative_point: bool = True
    cebox_threshold: float = 0.5
    gamma: float = 4.0
    grown_strength: float = 1.0
    multimask: bool = True
    engine: Optional[str] = None
    model: Optional[str] = None
    checkpoint: Optional[str] = None
    precision: str = "auto"
    device: Optional[str] = None
    chunk: int = 0
    adapter: Optional[str] = None
    embeddings: Optional[str] = None
    windows: str = "auto"
    window_scale: float = 1.0

    def __post_init__(self) -> None:
        self.engine, self.model = engine_option(self.engine, self.model), None
        self.prompts = parse_prompts(self.prompts)
        if self.reference not in REFERENCES:
            raise InputError(f"--reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")
        try:
            self.rules  # noqa: B018  (validates the overrides)
        except ValueError as e:
            raise InputError(str(e)) from None
        if self.iters < 1:
            raise InputError("--iters must be at least 1")
        if self.chunk < 0:
            raise InputError("chunk must be at least 1 (or 0 for the device's default)")
        if self.gamma <= 0:
            raise InputError("--gamma must be positive")
        window_rule(self.windows, 1, self.window_scale)  # the values' form (the frame is the engine's)

    @property
    def rules(self) -> Rules:
        """The reference's rules with this configuration's overrides."""
        return resolve_rules(self.reference, distance=self.distance, negative_region=self.negative_region,
                             negative_fallback=self.negative_fallback, mask_outside=self.mask_outside,
                             strength=self.strength, cebox_margin=self.cebox_margin,
                             cebox_rule=self.cebox_rule, stm=self.stm, upscale=self.upscale,
                             fp16_embeddings=self.fp16_embeddings)

    @property
    def engine_name(self) -> str:
        return self.engine or DEFAULT_ENGINE

    @property
    def cebox(self) -> CeBoxParams:
        return CeBoxParams(margin=self.rules.cebox_margin, threshold=self.cebox_threshold)

    def result_settings(self) -> dict:
        """The settings that shape the refined masks (not device, chunking or the cache path),
        with the resolved rules under ``rules``."""
        from pseudolabel.core.config import to_jsonable

        d = to_jsonable(self)
        for k in ("device", "chunk", "embeddings", "model"):
            d.pop(k, None)
        d["rules"] = to_jsonable(self.rules)
        d["engine"] = self.engine_name
        return d


def engine_for(cfg: RefineConfig):
    """The :class:`pseudolabel.core.engines.base.PromptEngine` the settings ask for."""
    from pseudolabel.core.engines import loading

    return loading.create_engine(cfg.engine_name, cfg.checkpoint, cfg.device, cfg.precision)


# ---- prompt kinds ------------------------------------------------------------------------------

def make_sampler(cfg: RefineConfig, emb):
    """The image's features as the CEBox rule reads them, or None when CEBox does not run."""
    if not needs_features(cfg):
        return None
    if cfg.rules.cebox_rule == "official":
        grid = emb.features.shape[-1]  # an image filling the frame (SAM 2: always) covers every cell
        full = tuple(emb.input_size) == (16 * grid, 16 * grid)
        return OfficialFeatures(emb.features, emb.original_size, region=(grid, grid) if full else None)
    return FeatureSampler(emb.features, emb.original_size, emb.input_size)


@dataclass
class PromptState:
    """The objects of one decoder call and what the prompt kinds derived for them.

    Attributes:
        masks: ``B×H×W`` bool current masks (non-empty).
        cfg: the settings.
        sampler: the image's features for CEBox (:func:`make_sampler`; None when CEBox is off).
        rules: ``cfg.rules``.
        maps: per object, its :class:`~refine.distance.DistanceMaps` (shared by the point and
            mask kinds).
        boxes: ``B×4`` tight boxes ``(x0, y0, x1, y1)``, inclusive max.
        grew: ``(B,)`` bool, set by the ``box`` kind: whether CEBox moved a side.
        cebox: ``B×4`` CEBox's boxes when it ran (set by the ``box`` kind), else None.
    """

    masks: np.ndarray
    cfg: RefineConfig
    sampler: object | None = None
    rules: Rules = field(init=False)
    maps: list = field(init=False)
    boxes: np.ndarray = field(init=False)
    grew: np.ndarray = field(init=False)
    cebox: np.ndarray | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.rules = self.cfg.rules
        self.maps = distance_maps(self.masks, self.rules.distance)
        self.boxes = np.array([m.box for m in self.maps], dtype=np.float64).reshape(-1, 4)
        self.grew = np.zeros(len(self.masks), dtype=bool)


def build_points(state: PromptState) -> dict:
    """Positive point (and negative point) per object: ``point_coords`` ``B×K×2`` (x, y),
    ``point_labels`` ``B×K`` (1, 0, or -1 where an object has no negative point)."""
    cfg, rules = state.cfg, state.rules
    k = 2 if cfg.negative_point else 1
    coords = np.zeros((len(state.masks), k, 2), dtype=np.float64)
    labels = np.ones((len(state.masks), k), dtype=np.int64)
    for i, maps in enumerate(state.maps):
        coords[i, 0] = positive_point(maps)
        if cfg.negative_point:
            neg = negative_point(maps, rules.negative_region, rules.negative_fallback)
            if neg is None:
                labels[i, 1] = -1  # SAM's padding label: "not a point"
            else:
                coords[i, 1] = neg
                labels[i, 1] = 0
    return {"point_coords": coords, "point_labels": labels}


def _grow(state: PromptState, i: int) -> tuple[np.ndarray, bool]:
    """One CEBox step for object ``i`` by the configured rule: ``(box, grew)`` (inclusive max)."""
    box = state.boxes[i]
    if state.rules.cebox_rule == "official":
        new, grew = official_elastic_box(state.masks[i], tuple(int(v) for v in box), state.sampler,
                                         state.rules.cebox_margin, state.cfg.cebox_threshold)
        return np.asarray(new, dtype=np.float64), grew
    exclusive = box + np.array([0, 0, 1, 1])
    query = state.sampler.query(state.masks[i])
    new, sides = elastic_box(exclusive, query, state.sampler, state.cfg.cebox)
    return new - np.array([0, 0, 1, 1]), bool(sides.any())


def build_box(state: PromptState) -> dict:
    """Tight box per object, grown by one CEBox step where enabled: ``boxes`` ``B×4``
    ``(x0, y0, x1, y1)`` with inclusive max, as SAM's ``batched_mask_to_box``."""
    boxes = state.boxes.copy()
    if state.sampler is not None and state.cfg.cebox.enabled:
        for i in range(len(state.masks)):
            boxes[i], state.grew[i] = _grow(state, i)
        state.cebox = boxes.copy()
    return {"boxes": boxes}


def build_mask(state: PromptState, input_size: tuple[int, int]) -> dict:
    """Gaussian-style mask prompt per object: ``mask_input`` ``B×1×256×256`` logits.

    The amplitude is decided per object (``grown_strength`` where CEBox grew its box); the
    official code lets the last object of the image decide for all of them (a bug)."""
    cfg, rules = state.cfg, state.rules
    strength = np.where(state.grew, cfg.grown_strength, rules.strength)
    return {"mask_input": mask_prompt(state.masks, state.maps, input_size, strength, cfg.gamma,
                                      rules.mask_outside)}


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
    """Keyword arguments of ``PromptEngine.decode`` for the enabled prompt kinds."""
    args: dict = {}
    for name in state.cfg.prompts:
        fn = PROMPT_KINDS[name]
        args.update(fn(state, input_size) if name == "mask" else fn(state))
    return args


def prompt_records(state: PromptState, args: dict) -> list[dict]:
    """Per object, the prompts handed to SAM, in original-image pixels: ``pos``/``neg`` lists of
    ``[x, y]``, ``box`` ``[x0, y0, x1, y1]`` (inclusive max) or None, ``cebox`` (CEBox's box
    when it ran) or None — the ``--dump-prompts`` record without ``id`` and ``iteration``."""
    out = []
    coords, labels = args.get("point_coords"), args.get("point_labels")
    for i in range(len(state.masks)):
        rec: dict = {"pos": [], "neg": []}
        if coords is not None:
            for (x, y), lab in zip(coords[i].tolist(), labels[i].tolist()):
                if lab in (0, 1):
                    rec["pos" if lab == 1 else "neg"].append([int(x), int(y)])
        rec["box"] = [int(v) for v in args["boxes"][i]] if "boxes" in args else None
        rec["cebox"] = [int(v) for v in state.cebox[i]] if state.cebox is not None else None
        out.append(rec)
    return out


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
        prompts: with ``record=True``, per object the list of :func:`prompt_records` of each
            iteration (an object that converged early repeats its last prompts up to ``iters``,
            exactly what further iterations would hand SAM; one that SAM emptied stops); else None.
    """

    masks: np.ndarray
    scores: np.ndarray
    iterations: np.ndarray
    kept_coarse: np.ndarray
    prompts: list | None = None


def needs_features(cfg: RefineConfig) -> bool:
    return "box" in cfg.prompts and cfg.cebox.enabled


UPSCALES = ("sam", "direct")


def upscale_masks(engine, low_res: torch.Tensor, emb, rule: str) -> np.ndarray:
    """``B×1×256×256`` logits → ``B×H×W`` bool masks (logits > 0).

    ``sam``: the engine family's own predictor's upsampling (SAM's ``postprocess_masks``: bilinear
    to 1024², crop the non-padded part, bilinear to the image), as the official code; ``direct``:
    the engine's one bilinear sampling.
    """
    if rule == "sam":
        up = engine.official_upscale(low_res, emb)
        return (up[:, 0] > 0).cpu().numpy()
    return engine.upscale(low_res, emb)[:, 0].cpu().numpy()


def refine_masks(engine, emb, masks: np.ndarray, cfg: RefineConfig, record: bool = False) -> RefineResult:
    """Refine the ``N`` coarse masks of one image.

    Args:
        engine: a :class:`pseudolabel.core.engines.base.PromptEngine`.
        emb: the image's :class:`pseudolabel.core.engines.base.ImageEmbedding`.
        masks: ``N×H×W`` coarse masks at the original image size, each non-empty.
        cfg: settings.
        record: keep the prompts of every iteration (:attr:`RefineResult.prompts`).

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
    rules = cfg.rules
    converged = np.zeros(n, dtype=bool)
    prompts: list[list[dict]] = [[] for _ in range(n)]
    sampler = make_sampler(cfg, emb)
    for _ in range(cfg.iters):
        todo = np.flatnonzero(active)
        if todo.size == 0:
            break
        chunk = cfg.chunk or default_prompt_batch(engine.device)
        for start in range(0, todo.size, chunk):
            idx = todo[start:start + chunk]
            state = PromptState(current[idx], cfg, sampler)
            args = build_prompts(state, emb.input_size)
            if record:
                for obj, rec in zip(idx, prompt_records(state, args)):
                    prompts[obj].append(rec)
            low_res, iou = engine.decode(emb, **args, multimask=cfg.multimask)
            best = iou.argmax(dim=1)
            rows = torch.arange(len(idx), device=low_res.device)
            new = upscale_masks(engine, low_res[rows, best][:, None], emb, rules.upscale)
            best_iou = iou[rows, best].float().cpu().numpy()
            for j, obj in enumerate(idx):
                iterations[obj] += 1
                if not new[j].any():
                    active[obj] = False  # keep the previous mask
                elif np.array_equal(new[j], current[obj]):
                    scores[obj] = best_iou[j]
                    active[obj] = False  # converged: the next iteration would repeat this one
                    converged[obj] = True
                else:
                    current[obj] = new[j]
                    scores[obj] = best_iou[j]
    if record:
        for obj in np.flatnonzero(converged):
            while len(prompts[obj]) < cfg.iters:
                prompts[obj].append(dict(prompts[obj][-1]))
    kept = np.isnan(scores)
    return RefineResult(current, scores, iterations, kept, prompts if record else None)
