"""Which SOLOv2 training rules `sap train` follows: AdelaiDet's (``official``, the default) or
``sap``'s own, chosen with ``--reference`` and overridable one by one in the configuration file.

``official`` is aim-uofa/AdelaiDet @ 3672122 (``adet/modeling/solov2/``, configs/SOLOv2): with it
every category target, mask target and positive cell equals AdelaiDet's (the golden vectors of
tests/data/golden/solov2_targets.json prove it). ``sap`` is the rule set ``sap train`` had before.

Options (the configuration file's keys) → values, ``official`` first:

* ``rule_cell_conflict``: ``official`` (annotation order: the later claimant gives a cell its
  class, and every claimant's mask is trained there) | ``sap`` (the smaller object wins the cell).
* ``rule_mask_target``: ``official`` (``imrescale`` by 1/4: OpenCV bilinear in uint8, to
  ``int(w/4 + 0.5)``) | ``sap`` (the 4×4 cells at least half covered).
* ``rule_centre``: ``official`` (centre of mass with pixel ``i`` at ``i``) | ``sap`` (at ``i + 0.5``).
* ``rule_scale_box``: ``official`` (the annotation's ``bbox`` sizes scale ranges and centre
  regions) | ``sap`` (the tight box of the mask).
* ``clip_grad``: ``0`` (official: AdelaiDet clips nothing) | ``35`` (sap: SOLO's mmdetection
  setting, the global L2 norm of all gradients); any other number is a norm of its own.

The rule options default to ``None`` in :class:`~segtrain.config.TrainConfig`;
:func:`apply_reference` fills those left unset from ``reference``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pseudolabel.core.errors import InputError

from .targets import RULES

REFERENCES: dict[str, dict[str, Any]] = {
    "official": {"rule_cell_conflict": "official", "rule_mask_target": "official", "rule_centre": "official",
                 "rule_scale_box": "official", "clip_grad": 0.0},
    "sap": {"rule_cell_conflict": "sap", "rule_mask_target": "sap", "rule_centre": "sap", "rule_scale_box": "sap",
            "clip_grad": 35.0},
}
#: the options a reference sets
REFERENCE_OPTIONS = tuple(REFERENCES["official"])


def apply_reference(cfg: Any) -> Any:
    """``cfg`` (a :class:`~segtrain.config.TrainConfig`) with every option of the reference that
    is ``None`` filled from ``cfg.reference``; applying it twice changes nothing.

    Raises:
        InputError: an unknown reference or rule value.
    """
    if cfg.reference not in REFERENCES:
        raise InputError(f"--reference must be one of {', '.join(REFERENCES)}, not {cfg.reference!r}")
    preset = REFERENCES[cfg.reference]
    chosen = {name: preset[name] if getattr(cfg, name) is None else getattr(cfg, name) for name in REFERENCE_OPTIONS}
    for name, value in chosen.items():
        allowed = RULES.get(name.removeprefix("rule_"))
        if name.startswith("rule_") and value not in allowed:
            raise InputError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return replace(cfg, **chosen)
