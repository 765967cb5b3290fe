"""Which SAMRefiner to follow: the official code's rules or the paper's, rule by rule.

``--reference official`` (the default) reproduces github.com/linyq2117/SAMRefiner at 0b2db8c,
including the quirks that change results; ``--reference paper`` follows the paper (ICLR 2025)
where the code departs from it, and our own choice where the paper is silent. Each rule can be
overridden on its own in a ``--config`` file (``distance: euclidean``, ``cebox_margin: 0.1``,
...). Two bugs are fixed under both references: the tight box has SAM's inclusive maximum
(as the official code and SAM's ``batched_mask_to_box``; an earlier ``sap`` added 1), and CEBox's
"grown" amplitude is decided per object, not by the last object of the image. docs/fidelity.md
lists every rule with the official file:line and its measured effect.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

REFERENCES = ("official", "paper")


@dataclass(frozen=True)
class Rules:
    """The rules that differ between the official code and the paper.

    Attributes:
        distance: ``chamfer`` (FastGeodis 3×3, two raster iterations, image border not
            background) or ``euclidean`` (exact transform, image border = background).
        negative_region: where the negative point is searched: ``box_half_open`` (the tight
            box without its last row and column, as the code slices it) or ``box``.
        negative_fallback: when that region holds no background: ``origin`` (pixel (0, 0),
            label 0, the code) or ``omit`` (no negative point).
        mask_outside: mask-prompt value outside the mask: ``gaussian`` (−strength·g, g
            taken through the resizes and read as 1 where it is 0, the code) or ``constant``
            (−strength).
        strength: mask-prompt amplitude (code 30, paper 15).
        cebox_margin: CEBox growth margin; 0 = off (code default 0, paper 0.1).
        cebox_rule: ``official`` (raw features upsampled then normalised, query from the
            nearest-downsampled mask, the code's strips and border test) or ``sap`` (our exact
            geometry: normalised cells sampled at pixel centres, strips of floor(10 %)).
        stm: ``official`` (OpenCV labels, sequential merging in label order, the code's union
            area) or ``greedy`` (best pair first).
        upscale: SAM logits to a mask for the next iteration: ``sam`` (SAM's
            postprocess_masks: to 1024, crop, resize) or ``direct`` (one bilinear sampling).
        fp16_embeddings: pass freshly encoded embeddings through fp16 like cached ones, so a
            run gives the same masks with or without a cache (the code keeps them fp32).
    """

    distance: str
    negative_region: str
    negative_fallback: str
    mask_outside: str
    strength: float
    cebox_margin: float
    cebox_rule: str
    stm: str
    upscale: str
    fp16_embeddings: bool


RULES: dict[str, Rules] = {
    "official": Rules(distance="chamfer", negative_region="box_half_open", negative_fallback="origin",
                      mask_outside="gaussian", strength=30.0, cebox_margin=0.0, cebox_rule="official",
                      stm="official", upscale="sam", fp16_embeddings=False),
    "paper": Rules(distance="euclidean", negative_region="box", negative_fallback="omit",
                   mask_outside="constant", strength=15.0, cebox_margin=0.1, cebox_rule="sap",
                   stm="greedy", upscale="direct", fp16_embeddings=True),
}

CHOICES = {"distance": ("chamfer", "euclidean"), "negative_region": ("box_half_open", "box"),
           "negative_fallback": ("origin", "omit"), "mask_outside": ("gaussian", "constant"),
           "cebox_rule": ("official", "sap"), "stm": ("official", "greedy"), "upscale": ("sam", "direct")}


def rule_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(Rules))


def resolve_rules(reference: str, **overrides) -> Rules:
    """The rules of ``reference`` with the given (non-None) rules replaced, checked.

    Raises:
        ValueError: unknown reference, rule or choice (one sentence).
    """
    if reference not in RULES:
        raise ValueError(f"unknown reference {reference!r}; choose one of {', '.join(REFERENCES)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(rule_names()))
    if unknown:
        raise ValueError(f"unknown rule(s) {', '.join(unknown)}")
    for k, v in given.items():
        if k in CHOICES and v not in CHOICES[k]:
            raise ValueError(f"{k} must be one of {', '.join(CHOICES[k])}, got {v!r}")
    rules = dataclasses.replace(RULES[reference], **given)
    if rules.strength <= 0:
        raise ValueError("strength must be positive")
    if rules.cebox_margin < 0:
        raise ValueError("cebox_margin must be 0 (off) or positive")
    return rules
