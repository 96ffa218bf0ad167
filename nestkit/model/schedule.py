"""NEST's optimiser: AdamW with NeMo's NoamAnnealing learning rate, as a pure function of the step.

NeMo's rule (core/optim/lr_scheduler.py, NoamAnnealing), with s = max(1, step):
    lr = base_lr * d_model^-0.5 * min(s^-0.5, s * warmup^-1.5)   (s^-0.5 alone when warmup is 0)
    and, once s > warmup, lr = max(lr, min_lr).
Under Lightning the scheduler is stepped after every optimiser step and starts at 0, so the
optimiser step with global_step g (0-based) uses lr(g): steps 0 and 1 both use s = 1.

Parameter groups, as NeMo's ModelPT builds them without `optim_param_groups`: one group holding
every parameter, weight decay on all of them (biases, norms and positional biases included).
Frozen parameters (quantizer, mask embedding) are in the group too but never get a gradient, so
AdamW leaves them untouched; keeping them keeps the optimiser state layout NeMo's.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from nestkit.config import OptimConfig, SchedConfig


def warmup_steps_of(sched: SchedConfig, max_steps: Optional[int] = None) -> int:
    """Warm-up length in optimiser steps: warmup_steps, or int(warmup_ratio * max_steps), or 0."""
    if sched.warmup_steps is not None and sched.warmup_ratio is not None:
        raise ValueError("optim.sched: set warmup_steps or warmup_ratio, not both")
    if sched.warmup_steps is not None:
        return sched.warmup_steps
    if sched.warmup_ratio is not None:
        total = sched.max_steps if max_steps is None else max_steps
        if total is None or total <= 0:
            raise ValueError(f"optim.sched.warmup_ratio: needs max_steps (expected a positive step count, got {total})")
        return int(sched.warmup_ratio * total)
    return 0


def noam_lr(step: int, base_lr: float, d_model: int, warmup_steps: int, min_lr: float) -> float:
    """Learning rate of the optimiser step with 0-based index `step` (NeMo's NoamAnnealing)."""
    if base_lr < min_lr:
        raise ValueError(f"optim.lr: below sched.min_lr (expected at least {min_lr}, got {base_lr})")
    s = max(1, step)
    if warmup_steps > 0:
        factor = min(s**-0.5, s * warmup_steps**-1.5)
    else:
        factor = s**-0.5
    lr = base_lr * (d_model**-0.5 * factor)  # grouped as NeMo does: equal to the last bit
    return max(lr, min_lr) if s > warmup_steps else lr


def lr_at_step(step: int, optim: OptimConfig, max_steps: Optional[int] = None) -> float:
    """The learning rate of `optim` (its NoamAnnealing schedule, or the constant lr) at `step`."""
    sched = optim.sched
    if sched is None:
        return optim.lr
    if sched.d_model is None:
        raise ValueError(
            "optim.sched.d_model: not set (expected encoder.d_model, got None). Build the config with config_from_dict"
        )
    return noam_lr(step, optim.lr, sched.d_model, warmup_steps_of(sched, max_steps), sched.min_lr)


def parameter_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """NeMo's single group: all parameters, all with weight decay."""
    return [{"params": list(model.parameters()), "weight_decay": optim.weight_decay}]


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    if optim.name != "adamw":
        raise ValueError(f"optim.name: unsupported (expected adamw, got {optim.name!r})")
    beta1, beta2 = optim.betas
    # torch's default implementation, as NeMo: the fused one would save ~2% of a CPU step, but
    # Lightning refuses gradient clipping under AMP with optimizers that unscale gradients themselves
    return torch.optim.AdamW(parameter_groups(model, optim), lr=optim.lr, betas=(beta1, beta2), eps=optim.eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, max_steps: Optional[int] = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler giving lr_at_step(step) (step it after every optimiser step)."""
    base_lr = optim.lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at_step(step, optim, max_steps) / base_lr)
