"""Which SAPNet rules `sap select` follows: the official code's (default) or the paper's.

``--reference official`` reproduces zhaoyangwei123/SAPNet @ ed0d086, quirks included where
they change results; ``--reference paper`` follows the CVPR 2024 paper where it states a rule
(and the official code where it is silent). Each rule can be set on its own in the
configuration file (``rule_bms: paper``, ...); docs/fidelity.md has one row per rule with the
official file:line and the measured effect.

Rules (option → values, official value first):

* ``rule_bms``: ``official`` (the top-1 box is the proposal times ``s / (s + 1e-8)`` in
  float32, and BMS runs in float32: a winner among the point proposals then counts as a larger
  candidate than itself, which pins the box and partly disables mining) | ``paper`` (the top-1
  proposal itself).
* ``rule_ppg_box``: ``official`` (PPG rescales the first proposal within 1 px of the mined
  stage-0 box, else the bag's last proposal) | ``paper`` (the mined stage-0 box b*).
* ``rule_mps``: ``official`` (MPS targets are ranks 2, 4, 6 of the stage-1 ranking of all
  proposals; the selected mask may be one of them) | ``paper`` (ranks among the other proposals).
* ``rule_roi_align``: ``official`` (mmcv RoIAlign: aligned, adaptive sampling, mmdetection's
  level rule) | ``legacy`` (torchvision MultiScaleRoIAlign, not aligned, sampling 2).
* ``rule_bn``: ``official`` (BatchNorm statistics frozen, affine weights trained in ResNet
  layers 2–4) | ``frozen`` (all BatchNorm frozen).
* ``rule_pdg_point``: ``official`` (PDG measures from the centre of ``true_bbox`` when the
  proposals file has one) | ``paper`` (from the annotated point).
* ``rule_neg_norm``: ``points`` (official: the negative loss is divided by the number of
  points) | ``negatives`` (the paper: by the number of negatives).

``pdg_root``, ``pdg_power`` and ``prm_select`` follow the reference too (official 0.25, 1/64,
softmax; paper 0.5, 0.015, sigmoid).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from pseudolabel.core.errors import InputError

RULE_CHOICES: dict[str, tuple[Any, ...]] = {
    "rule_bms": ("official", "paper"),
    "rule_ppg_box": ("official", "paper"),
    "rule_mps": ("official", "paper"),
    "rule_roi_align": ("official", "legacy"),
    "rule_bn": ("official", "frozen"),
    "rule_pdg_point": ("official", "paper"),
    "rule_neg_norm": ("points", "negatives"),
    "prm_select": ("softmax", "sigmoid"),
}

REFERENCES: dict[str, dict[str, Any]] = {
    "official": {"rule_bms": "official", "rule_ppg_box": "official", "rule_mps": "official",
                 "rule_roi_align": "official", "rule_bn": "official", "rule_pdg_point": "official",
                 "rule_neg_norm": "points", "pdg_root": 0.25, "pdg_power": 1.0 / 64, "prm_select": "softmax"},
    "paper": {"rule_bms": "paper", "rule_ppg_box": "paper", "rule_mps": "paper",
              "rule_roi_align": "official", "rule_bn": "official", "rule_pdg_point": "paper",
              "rule_neg_norm": "negatives", "pdg_root": 0.5, "pdg_power": 0.015, "prm_select": "sigmoid"},
}
RULE_NAMES = tuple(REFERENCES["official"])


def apply_reference(cfg: Any) -> Any:
    """``cfg`` with every rule left at ``None`` filled from ``cfg.reference``.

    Raises:
        InputError: unknown reference or rule value.
    """
    if cfg.reference not in REFERENCES:
        raise InputError(f"--reference must be one of {', '.join(REFERENCES)}, not {cfg.reference!r}")
    preset = REFERENCES[cfg.reference]
    names = {f.name for f in fields(cfg)}
    values = {k: (getattr(cfg, k) if getattr(cfg, k) is not None else v) for k, v in preset.items() if k in names}
    for key, allowed in RULE_CHOICES.items():
        if key in values and values[key] not in allowed:
            raise InputError(f"{key} must be one of {', '.join(map(str, allowed))}, not {values[key]!r}")
    return replace(cfg, **values)
