"""Find the first module where NaN or Inf appears, in activations (forward) or gradients (backward).

    with NanProbe(model) as probe:
        loss = model.loss(model(...)).loss
        loss.backward()
    print(probe.report())

Forward: the first module, in execution order, whose output holds a non-finite value (inner
modules finish first, so this is the innermost one), and whether its inputs were still finite (if
not, the batch itself carried the NaN). Backward: the first module output whose gradient turns
non-finite, in backward order (the one closest to the loss). Every check synchronises with the
device, so use it to diagnose a step, not in every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn


@dataclass
class NonFinite:
    module: str  # dotted name inside the probed model ("<model>" for the model itself)
    where: str  # "output", or "gradient of output"
    inputs_finite: Optional[bool] = None  # forward only
    # indices along the first dimension of the first non-finite tensor that hold NaN/Inf: which
    # utterances of the batch carried it, while rows are still separate (the caller maps them to
    # the batch: the NEST preprocessor stacks clean and noisy audio, so 2B rows there)
    rows: Optional[list[int]] = None


class NanProbe:
    def __init__(self, model: nn.Module):
        self.model = model
        self.forward_origin: Optional[NonFinite] = None
        self.backward_origin: Optional[NonFinite] = None
        self._handles: list[Any] = []

    def __enter__(self) -> NanProbe:
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_hook(self._forward_hook(name or "<model>")))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            tensors = list(_tensors(output))
            if self.forward_origin is None and not all(_finite(t) for t in tensors):
                inputs_finite = all(_finite(t) for t in _tensors(inputs))
                bad = next(t for t in tensors if not _finite(t))
                self.forward_origin = NonFinite(name, "output", inputs_finite, nonfinite_rows(bad))
            for tensor in tensors:
                if tensor.requires_grad:
                    tensor.register_hook(self._gradient_hook(name))

        return hook

    def _gradient_hook(self, name: str):
        def hook(grad: torch.Tensor) -> None:
            if self.backward_origin is None and not _finite(grad):
                self.backward_origin = NonFinite(name, "gradient of output", rows=nonfinite_rows(grad))

        return hook

    def report(self) -> str:
        lines = []
        if self.forward_origin is None:
            lines.append("forward: every module output finite")
        else:
            origin = self.forward_origin
            source = "its inputs were finite" if origin.inputs_finite else "its inputs were already non-finite"
            lines.append(f"forward: first non-finite output in module {origin.module} ({source})")
        if self.backward_origin is None:
            lines.append("backward: every output gradient finite (or no backward ran)")
        else:
            lines.append(f"backward: first non-finite gradient at the output of module {self.backward_origin.module}")
        bad = nonfinite_parameters(self.model)
        if bad:
            lines.append(
                f"parameters with non-finite values or gradients: {', '.join(bad[:10])}"
                + (" ..." if len(bad) > 10 else "")
            )
        return "\n".join(lines)


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Names of parameters whose value or gradient holds NaN or Inf."""
    return [
        name
        for name, p in model.named_parameters()
        if not _finite(p.detach()) or (p.grad is not None and not _finite(p.grad))
    ]


def nonfinite_rows(tensor: torch.Tensor) -> list[int]:
    """Indices along dim 0 of `tensor` that hold a NaN or Inf ([0] for a scalar that does)."""
    if tensor.dim() == 0:
        return [] if bool(torch.isfinite(tensor)) else [0]
    bad = ~torch.isfinite(tensor.detach()).reshape(tensor.shape[0], -1).all(dim=1)
    return torch.nonzero(bad).flatten().tolist()


def _finite(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
