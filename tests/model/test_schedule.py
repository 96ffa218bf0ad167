"""NoamAnnealing as a pure function of the step, checked against numbers NeMo's scheduler produced."""

from __future__ import annotations

import json

import pytest
import torch
from model_testing import REFERENCE_DIR, tiny_config

from nestkit.config import OptimConfig, SchedConfig
from nestkit.model.nest import NestModel
from nestkit.model.schedule import (
    build_optimizer,
    build_scheduler,
    lr_at_step,
    noam_lr,
    parameter_groups,
    warmup_steps_of,
)

NEMO_LRS = json.loads((REFERENCE_DIR / "noam_lr.json").read_text())


def optim_of(case: dict) -> OptimConfig:
    c = case["config"]
    sched = SchedConfig(
        d_model=c["d_model"],
        warmup_steps=c["warmup_steps"],
        warmup_ratio=c["warmup_ratio"],
        min_lr=c["min_lr"],
        max_steps=c["max_steps"],
    )
    return OptimConfig(lr=c["lr"], sched=sched)


@pytest.mark.parametrize("name", sorted(NEMO_LRS))
def test_learning_rate_by_global_step_equals_nemos_exactly(name):
    optim = optim_of(NEMO_LRS[name])
    for step, expected in NEMO_LRS[name]["lr_by_global_step"].items():
        assert lr_at_step(int(step), optim) == expected, step


@pytest.mark.parametrize("name", sorted(NEMO_LRS))
def test_scheduler_stepped_like_lightning_gives_the_same_rates(name):
    optim = optim_of(NEMO_LRS[name])
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=optim.lr)
    scheduler = build_scheduler(optimizer, optim)
    expected = NEMO_LRS[name]["lr_by_global_step"]
    for step in range(102):
        if str(step) in expected:
            assert optimizer.param_groups[0]["lr"] == pytest.approx(expected[str(step)], rel=1e-12)
        optimizer.step()
        scheduler.step()


def test_warmup_from_ratio_and_errors():
    assert warmup_steps_of(SchedConfig(warmup_steps=None, warmup_ratio=0.1), max_steps=1000) == 100
    assert warmup_steps_of(SchedConfig(warmup_steps=None, warmup_ratio=None)) == 0
    with pytest.raises(ValueError, match="warmup_ratio"):
        warmup_steps_of(SchedConfig(warmup_steps=None, warmup_ratio=0.1, max_steps=None))
    with pytest.raises(ValueError, match="min_lr"):
        noam_lr(10, base_lr=1e-7, d_model=64, warmup_steps=0, min_lr=1e-6)


def test_peak_is_at_the_end_of_warmup_and_min_lr_applies_only_after_it():
    lrs = [noam_lr(s, 5.0, 512, 100, 1e-3) for s in range(1, 300)]
    assert max(range(len(lrs)), key=lrs.__getitem__) + 1 == 100
    assert noam_lr(1, 5.0, 512, 100, 1.0) < 1.0  # still warming up: no floor
    assert noam_lr(10**9, 5.0, 512, 100, 1e-3) == 1e-3


def test_one_group_with_weight_decay_on_every_parameter_frozen_ones_untouched():
    model = NestModel(tiny_config())
    optim = OptimConfig(weight_decay=0.01)
    groups = parameter_groups(model, optim)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.01
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in model.parameters()]
    optimizer = build_optimizer(model, optim)
    frozen = model.quantizer.codebooks.detach().clone()
    bias = model.encoder.layers[0].feed_forward1.linear1.bias
    before = bias.detach().clone()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()  # zero gradient: only weight decay moves the weights
    assert torch.equal(model.quantizer.codebooks, frozen)
    torch.testing.assert_close(bias.detach(), before * (1 - optim.lr * 0.01))
