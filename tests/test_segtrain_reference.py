"""`sap train --reference official|sap`: each reference sets the five rules, a rule set alone in
the configuration file wins over the reference, and both engines receive the result."""

from __future__ import annotations

import pytest

from pseudolabel.core.config import resolve
from pseudolabel.core.errors import InputError
from segtrain import TrainConfig
from segtrain.config import model_config_of, resolved
from segtrain.reference import REFERENCE_OPTIONS

RULES = ("rule_cell_conflict", "rule_mask_target", "rule_centre", "rule_scale_box")


def test_official_is_the_default_and_adelaidet_s_rules():
    cfg = resolved(TrainConfig(out="r"))
    assert cfg.reference == "official" and cfg.clip_grad == 0.0
    assert all(getattr(cfg, r) == "official" for r in RULES)
    assert set(REFERENCE_OPTIONS) == {*RULES, "clip_grad"}


def test_sap_keeps_the_former_rules_and_single_rules_override_the_reference():
    cfg = resolved(TrainConfig(out="r", reference="sap"))
    assert cfg.clip_grad == 35.0 and all(getattr(cfg, r) == "sap" for r in RULES)
    cfg = resolved(resolve(TrainConfig(), {"rule_centre": "sap", "clip_grad": 10.0}, out="r"))
    assert (cfg.rule_centre, cfg.clip_grad, cfg.rule_mask_target) == ("sap", 10.0, "official")
    assert resolved(cfg) == cfg  # applying twice changes nothing
    model = model_config_of(resolved(TrainConfig(out="r", reference="sap", rule_scale_box="official")), 3)
    assert model.data_rules() == {"mask_target": "sap", "centre": "sap", "scale_box": "official"}
    assert model.rule_cell_conflict == "sap"


def test_the_detectron2_engine_gets_the_rules_and_the_clipping():
    pytest.importorskip("detectron2")
    from segtrain.d2.settings import build_d2_config, solov2_config_from_cfg

    for reference, clip in (("official", 0.0), ("sap", 35.0)):
        d2 = build_d2_config(TrainConfig(out="r", train="t.json", images="i", reference=reference, device="cpu"), 3)
        assert d2.SAP.CLIP_GRAD_NORM == clip
        assert solov2_config_from_cfg(d2).rule_cell_conflict == reference


@pytest.mark.parametrize("bad, message", [(dict(reference="paper"), "--reference must be one of official, sap"),
                                          (dict(rule_cell_conflict="larger"), "rule_cell_conflict must be one of"),
                                          (dict(clip_grad=-1.0), "clip_grad")])
def test_unknown_references_and_rule_values_are_one_sentence(bad, message):
    with pytest.raises(InputError, match=message):
        from segtrain.config import check_config

        check_config(TrainConfig(out="r", **bad))
