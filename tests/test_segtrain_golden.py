"""`sap train --reference official` builds AdelaiDet's targets exactly: golden vectors made by
AdelaiDet's own ``get_ground_truth_single`` (scripts/make_golden_solov2.py, 3672122).

Every case (the test photos, touching objects, shared centre cells, scale-range boundaries,
image edges, a bbox that disagrees with its mask, an empty mask) must give, on every level, the
same category grid, the same mask-target cells in the same order, and the same stride-4 masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pseudolabel.core.rle import decode_rle
from segtrain.losses import _pad_to
from segtrain.model import SOLOv2Config
from segtrain.targets import build_targets, rule_targets

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden" / "solov2_targets.json").read_text())
OFFICIAL = {"mask_target": "official", "centre": "official", "scale_box": "official"}


def _mask(counts: str, hw: list[int]) -> np.ndarray:
    return decode_rle({"size": hw, "counts": counts})


def ours(case: dict, rules: dict[str, str], cell_conflict: str):
    """Our instance targets and level targets of a golden case."""
    hw = case["image_hw"]
    masks = torch.from_numpy(np.stack([_mask(c, hw) for c in case["masks"]]))
    t = rule_targets(masks, torch.tensor(case["labels"]), torch.tensor(case["boxes"]), rules)
    s = GOLDEN["settings"]
    levels = build_targets(t, tuple(case["padded_hw"]), tuple(s["num_grids"]),
                           tuple(tuple(r) for r in s["scale_ranges"]), s["sigma"], s["num_classes"], cell_conflict)
    return t, levels


def test_the_golden_settings_are_sap_s_solov2_defaults():
    cfg, s = SOLOv2Config(), GOLDEN["settings"]
    assert list(cfg.num_grids) == s["num_grids"] and cfg.sigma == s["sigma"]
    assert [list(r) for r in cfg.scale_ranges] == s["scale_ranges"]
    assert (cfg.rule_cell_conflict, cfg.rule_mask_target, cfg.rule_centre, cfg.rule_scale_box) == ("official",) * 4


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_official_targets_equal_adelaidet_s(case):
    t, levels = ours(case, OFFICIAL, "official")
    th, tw = case["target_hw"]
    masks = _pad_to(t.masks, th, tw)
    golden_targets = [torch.from_numpy(_mask(c, [th, tw])) for c in case["targets"]]
    n = GOLDEN["settings"]["num_classes"]
    for k, (lv, gold) in enumerate(zip(levels, case["levels"])):
        flat = lv.labels.reshape(-1)
        positive = [[c, int(flat[c])] for c in (flat != n).nonzero().flatten().tolist()]
        assert positive == gold["positive"], f"level {k}: category targets differ"
        cells, owners = lv.pairs()
        assert cells.tolist() == gold["grid_order"], f"level {k}: mask-target cells differ"
        for j, (owner, ref) in enumerate(zip(owners.tolist(), gold["mask_targets"])):
            assert torch.equal(masks[owner], golden_targets[ref]), f"level {k}: mask target {j} differs"


def test_each_sap_rule_departs_from_adelaidet_somewhere_in_the_cases():
    # the golden test is not vacuous: each rule switched to sap alone changes some target
    def changed(rules: dict[str, str], conflict: str) -> bool:
        for case in GOLDEN["cases"]:
            (t0, lv0), (t1, lv1) = ours(case, OFFICIAL, "official"), ours(case, rules, conflict)
            if t0.masks.shape != t1.masks.shape or not torch.equal(t0.masks, t1.masks):
                return True
            if any(not torch.equal(a.labels, b.labels) or not torch.equal(a.pairs()[0], b.pairs()[0])
                   or not torch.equal(a.pairs()[1], b.pairs()[1]) for a, b in zip(lv0, lv1)):
                return True
        return False

    for rule in OFFICIAL:
        assert changed({**OFFICIAL, rule: "sap"}, "official"), rule
    assert changed(OFFICIAL, "sap")
