"""Which SAPNet rules `sap select` follows: the official code's (default), the paper's or ours.

``--reference official`` reproduces zhaoyangwei123/SAPNet @ ed0d086, quirks included where
they change results; ``--reference paper`` follows the CVPR 2024 paper where it states a rule
(and the official code where it is silent); ``--reference sap`` is the official code with the
rules of :data:`SAP_RULES`, ours: on ground-truth bags of photos they lift a perfect network's
ceiling from 0.84–0.96 to 0.993–1.000, on the pocket SAM's proposals they do not (docs/selector.md,
"Rules of our own"), so ``official`` stays the default. Each rule can be set on its own in the
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
* ``rule_mining``: ``official`` (BMS mines towards every larger point proposal that passes its
  IoU tests) | ``scored`` (ours: only towards a proposal the same stage scores at least
  :data:`MINING_SHARE` of the top-1's score, so a whole object is not mixed with a larger
  proposal that holds a touching neighbour).
* ``rule_final``: ``official`` (the final mask is the proposal whose box has the highest IoU
  with the mined box) | ``scored`` (ours: among the proposals whose box IoU is at least
  :data:`FINAL_NEAR` of the highest, the one the final stage scores best, so a mined box a little
  larger than the object does not hand the choice to the proposal with a background band).

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
    "rule_mining": ("official", "scored"),
    "rule_final": ("official", "scored"),
}
#: ``rule_mining: scored``: a BMS candidate's score must reach this share of the top-1's
MINING_SHARE = 0.5
#: ``rule_final: scored``: proposals whose box IoU with the mined box reaches this share of the
#: best IoU are near-ties, decided by the final stage's score
FINAL_NEAR = 0.9

REFERENCES: dict[str, dict[str, Any]] = {
    "official": {"rule_bms": "official", "rule_ppg_box": "official", "rule_mps": "official",
                 "rule_roi_align": "official", "rule_bn": "official", "rule_pdg_point": "official",
                 "rule_neg_norm": "points", "pdg_root": 0.25, "pdg_power": 1.0 / 64, "prm_select": "softmax",
                 "rule_mining": "official", "rule_final": "official"},
    "paper": {"rule_bms": "paper", "rule_ppg_box": "paper", "rule_mps": "paper",
              "rule_roi_align": "official", "rule_bn": "official", "rule_pdg_point": "paper",
              "rule_neg_norm": "negatives", "pdg_root": 0.5, "pdg_power": 0.015, "prm_select": "sigmoid",
              "rule_mining": "official", "rule_final": "official"},
}
#: the rules of ``--reference sap`` that differ from the official ones (``rule_bms: paper`` drops
#: the float32 ``s / (s + 1e-8)`` top-1 weighting)
SAP_RULES: dict[str, Any] = {"rule_bms": "paper", "rule_mining": "scored", "rule_final": "scored"}
REFERENCES["sap"] = {**REFERENCES["official"], **SAP_RULES}
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
