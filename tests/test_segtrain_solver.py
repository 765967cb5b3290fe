"""The learning-rate schedule of short runs, explicit steps, and the batch options both engines check."""

from __future__ import annotations

import pytest

from pseudolabel.core.errors import InputError
from segtrain import TrainConfig
from segtrain.config import check_config, lr_schedule_of, per_pass_of
from segtrain.solver import make_schedule


def test_short_runs_keep_only_the_steps_that_act():
    assert make_schedule("1x", 90_000, 0.01, 16).steps == (60_000, 80_000)
    assert make_schedule("1x", 5, 0.01, 16).steps == (3, 4)
    assert make_schedule("1x", 4, 0.01, 16).steps == (3,)  # the step at 4 = the end never acts
    assert make_schedule("1x", 1, 0.01, 16).steps == ()
    s = make_schedule("1x", 4, 0.01, 16)
    assert [s(i) for i in range(4)] == pytest.approx([0.01, 0.01, 0.01, 0.001])  # no warmup under 10 iterations
    assert make_schedule("1x", 100, 0.01, 8).base_lr == 0.005 and make_schedule("1x", 100, 0.01, 8).warmup_iters == 10


def test_explicit_steps_are_increasing_and_after_the_warmup():
    assert make_schedule("1x", 100, 0.01, 16, steps=(50, 200)).steps == (50,)
    for steps, words in (((50, 50), "increasing"), ((0, 50), "positive"), ((5, 50), "inside the 10-iteration warmup")):
        with pytest.raises(InputError, match=words):
            lr_schedule_of(TrainConfig(out="r", iters=100, steps=list(steps)))


def test_batches_split_into_processes_and_passes():
    assert per_pass_of(TrainConfig(batch=16), 1) == 2
    assert per_pass_of(TrainConfig(batch=16, images_per_pass=16), 1) == 16
    assert per_pass_of(TrainConfig(batch=1), 1) == 1  # a batch smaller than a pass is one pass
    with pytest.raises(InputError, match="not divisible by the 3 processes"):
        per_pass_of(TrainConfig(batch=16), 3)
    with pytest.raises(InputError, match="multiple of 2"):
        per_pass_of(TrainConfig(batch=3), 1)
    with pytest.raises(InputError, match="torch engine runs on several GPUs through torchrun"):
        check_config(TrainConfig(out="r", num_gpus=2))
    with pytest.raises(InputError, match="flip_prob must be a number at least 0 and at most 1, not 1.5"):
        check_config(TrainConfig(out="r", flip_prob=1.5))
