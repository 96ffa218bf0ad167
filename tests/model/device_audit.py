"""A stand-in accelerator for machines without one: tensors that say they live on another device.

`AuditedDevice()` is a dispatch mode under which `.to(AUDITED)` (and any factory call given
`device=AUDITED`) returns an `OnDevice` tensor: it holds ordinary CPU data, so everything runs for
real (`.tolist()`, `.item()`, data-dependent control flow), but it reports `AUDITED` as its device
and every operation on it is checked with CUDA's rules:
- an operation mixing it with a CPU tensor fails, except CPU scalars (0-d) and CPU index tensors
  (`x[cpu_indices]`, `copy_`), which CUDA accepts too;
- a random draw onto it from a generator of another device fails ("a CPU generator used to draw
  a CUDA tensor");
- a tensor created without `device=` stays a plain CPU tensor, so it fails as soon as it meets
  one that lives on the device.

"meta" is the stand-in: a device every torch build knows, whose guard needs no driver (a fake
"cuda" cannot even be indexed on a CPU-only build).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

AUDITED = torch.device("meta")
aten = torch.ops.aten
# CUDA accepts CPU tensors in these positions (index tensors, the source of a copy)
MIXED_DEVICE_OK = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
    aten.copy_.default,
}


class DeviceMismatch(RuntimeError):
    """What CUDA would have raised."""


class OnDevice(torch.Tensor):
    """CPU data reported as living on AUDITED."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        wrapper = torch.Tensor._make_wrapper_subclass(
            cls,
            data.shape,
            strides=data.stride(),
            storage_offset=data.storage_offset(),
            dtype=data.dtype,
            device=AUDITED,
            requires_grad=data.requires_grad,
        )
        wrapper.inner = data
        return wrapper

    def __repr__(self) -> str:
        return f"OnDevice({self.inner!r})"

    def tolist(self):  # a device tensor's tolist() copies to the host, as on CUDA
        return self.inner.tolist()

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
            # list indices become CPU index tensors, as CUDA indexing makes them (C++ would build
            # them as empty meta tensors here)
            args = (args[0], _lists_as_tensors(args[1]), *args[2:])
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _lists_as_tensors(index):
    if isinstance(index, list):
        return torch.tensor(index)
    if isinstance(index, tuple):
        return tuple(_lists_as_tensors(i) for i in index)
    return index


def host(tensor: torch.Tensor) -> torch.Tensor:
    """The CPU data of a tensor, wherever it claims to live."""
    return tensor.inner if isinstance(tensor, OnDevice) else tensor


def _is_audited(device) -> bool:
    return device is not None and torch.device(device).type == AUDITED.type


def _unwrap(value):
    if isinstance(value, OnDevice):
        return value.inner
    if isinstance(value, torch.device) and value.type == AUDITED.type:
        return torch.device("cpu")
    return value


def _run(func, args, kwargs):
    flat, _ = tree_flatten((args, kwargs))
    on_device = [a for a in flat if isinstance(a, OnDevice)]
    if any(type(a) is torch.Tensor and a.device.type == AUDITED.type for a in flat):
        raise AssertionError(f"{func}: a real {AUDITED} tensor (no data) reached the audit; it cannot check this code")
    if func is aten._to_copy.default:
        source, target = args[0], kwargs.get("device")
        copy = func(_unwrap(source), **tree_map(_unwrap, kwargs))
        moved_here = _is_audited(target) or (target is None and isinstance(source, OnDevice))
        return OnDevice(copy) if moved_here else copy
    on_host = [a for a in flat if isinstance(a, torch.Tensor) and not isinstance(a, OnDevice) and a.dim() > 0]
    if on_device and on_host and func not in MIXED_DEVICE_OK:
        shapes = ", ".join(str(tuple(t.shape)) for t in on_host)
        raise DeviceMismatch(f"{func}: tensors on {AUDITED} and on cpu (shapes {shapes}) in one operation")
    lands_on_device = bool(on_device) or _is_audited(kwargs.get("device"))
    generator = kwargs.get("generator")
    if generator is not None and lands_on_device and generator.device.type != AUDITED.type:
        raise DeviceMismatch(f"{func}: a {generator.device.type} generator draws a tensor on {AUDITED}")
    out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
    if not lands_on_device:
        return out
    return tree_map(lambda o: OnDevice(o) if type(o) is torch.Tensor else o, out)


class AuditedDevice(TorchDispatchMode):
    """Within it, AUDITED behaves like an accelerator with CUDA's device rules (see the module)."""

    def __enter__(self):
        # torch.tensor(data, device=...) and list indices would otherwise be built as real (empty)
        # meta tensors below the dispatcher; this way they are built on the CPU and moved here
        self._lift_cpu_only = torch._C._only_lift_cpu_tensors()
        torch._C._set_only_lift_cpu_tensors(True)
        return super().__enter__()

    def __exit__(self, *exc):
        torch._C._set_only_lift_cpu_tensors(self._lift_cpu_only)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})
