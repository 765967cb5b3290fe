"""The rules of `--reference sap` (ours): score-gated BMS mining and the score-decided final match.

Hand-made boxes of one point: a whole object W = (10, 10, 50, 50), its proposal with a
background band B = (7, 7, 53, 53), and a larger proposal M = (10, 10, 70, 70) that holds a
touching neighbour. Boxes are XYXY pixels.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pseudolabel.core.errors import InputError
from pseudolabel.selector import geometry as geo
from pseudolabel.selector import official
from pseudolabel.selector.mil import SelectorStep
from pseudolabel.selector.options import SelectConfig
from pseudolabel.selector.reference import REFERENCES, SAP_RULES, apply_reference

PART = [20.0, 20.0, 40.0, 50.0]
WHOLE = [10.0, 10.0, 50.0, 50.0]
MERGED = [10.0, 10.0, 70.0, 70.0]
BAND = [7.0, 7.0, 53.0, 53.0]
BAG = np.array([PART, WHOLE, MERGED, WHOLE, PART, BAND])  # point prompt's 3, then point+box's 3


def test_official_bms_mixes_the_whole_object_with_the_merged_proposal():
    """The failure the rule addresses: IoU(W, M) = 4/9 passes the contain test, and the mined box
    (a blend of W and M) then matches the band proposal better than the whole object."""
    mined, branch = geo.bms(np.array(WHOLE), BAG[:3])
    assert branch == "contain" and mined[2] == pytest.approx(730 / 13)
    assert geo.final_mask_index(BAG, mined) == 5  # the band, not the whole


@pytest.mark.parametrize("bms", [geo.bms, lambda box, cands, **kw: official.bms(torch.tensor(box, dtype=torch.float32),
                                                                                 cands, **kw)])
def test_minable_skips_candidates_the_stage_scores_low(bms):
    mined, branch = bms(np.array(WHOLE), BAG[:3], minable=np.array([True, True, False]))
    assert branch == "none" and np.allclose(np.asarray(mined), WHOLE)
    mined, branch = bms(np.array(PART), BAG[:3], minable=np.array([True, True, False]))
    assert branch == "contain"  # a part still grows towards a whole the stage scores well


def test_scored_final_index_decides_near_ties_by_score():
    box = np.array([8.0, 8.0, 52.0, 52.0])  # a mined box between W and B
    assert geo.final_mask_index(BAG, box) == 5
    scores = np.array([0.1, 0.6, 0.05, 0.2, 0.0, 0.05])
    assert geo.scored_final_index(BAG, box, scores) == 1
    # far from every near-tie the geometry decides whatever the scores
    assert geo.scored_final_index(BAG, np.array(MERGED), scores) == 2
    # equal scores: the higher IoU, then the first
    assert geo.scored_final_index(BAG, box, np.ones(6)) == 5


def test_sap_preset_is_official_plus_its_rules():
    assert REFERENCES["sap"] == {**REFERENCES["official"], **SAP_RULES}
    cfg = apply_reference(SelectConfig(reference="sap"))
    assert (cfg.rule_bms, cfg.rule_mining, cfg.rule_final) == ("paper", "scored", "scored")
    assert apply_reference(SelectConfig()).rule_mining == "official"
    with pytest.raises(InputError, match="rule_final"):
        apply_reference(SelectConfig(rule_final="best"))


def _step(**rules) -> SelectorStep:
    return SelectorStep(torch.nn.Module(), replace(SelectConfig(method="sapnet"), **rules))


@pytest.mark.parametrize("rules,expected", [({}, 5), ({"reference": "sap"}, 1)])
def test_selector_step_routes_the_rules(rules, expected):
    """A confident whole-object top-1 (score 0.9, the merged proposal scored low): the official
    rules mine towards M and end at the band; the sap rules keep the whole object."""
    step = _step(**rules)
    scores = np.array([0.02, 0.9, 0.01, 0.05, 0.01, 0.01])
    top = step._top1(np.array(WHOLE), torch.tensor(0.9), (100, 100))
    mined, _ = step._bms(top, BAG, scores, 0.9)
    assert step._final(BAG, mined, step.cfg.rule_bms == "official", scores) == expected
