"""From plain YAML data to the schema's dataclasses, collecting every problem instead of stopping
at the first: unknown or misspelt keys (with the valid keys and a "did you mean"), wrong types
(with the expected one), `_target_` classes nestkit does not implement, and NeMo keys that ask for
something nestkit cannot do.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

from nestkit.config.schema import TARGETS, NestConfig


def _check_target(cls: type, target: Any, where: str, problems: list[str]) -> None:
    allowed = TARGETS.get(cls)
    if allowed is None:
        problems.append(f"{where}._target_: this section takes no _target_ (got {target!r})")
        return
    class_name = str(target).rsplit(".", 1)[-1]
    if class_name not in allowed:
        problems.append(
            f"{where}._target_: unsupported class (expected {' or '.join(allowed)}, got {target!r}). "
            f"nestkit implements NEST's modules only"
        )


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(item)}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


_NO_MATCH = object()
_OPENERS = ("{", "(", "[", "<", "_OP_")
_CLOSERS = ("}", ")", "]", ">", "_CL_")


def split_list(value: str) -> list[str]:
    """NeMo's comma-joined list ("a.json,b.json"), leaving commas inside brace patterns alone
    (`audio_{0,1}.tar`, `audio__OP_0,1_CL_.tar` are one pattern, expanded later as NeMo does)."""
    parts, depth, start, at = [], 0, 0, 0
    while at < len(value):
        opener = next((t for t in _OPENERS if value.startswith(t, at)), None)
        closer = next((t for t in _CLOSERS if value.startswith(t, at)), None) if opener is None else None
        if opener:
            depth, at = depth + 1, at + len(opener)
            continue
        if closer:
            depth, at = max(0, depth - 1), at + len(closer)
            continue
        if value[at] == "," and depth == 0:
            parts.append(value[start:at])
            start = at + 1
        at += 1
    parts.append(value[start:])
    return [p.strip() for p in parts if p.strip()]


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Return `value` as type `tp`, or _NO_MATCH (without recording a problem)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        # An exact match wins: typing caches Union[int, float] and Union[float, int] as one object,
        # so the order of the options cannot be relied on.
        if type(value) in typing.get_args(tp) and not dataclasses.is_dataclass(value):
            return value
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            sub_problems: list[str] = []
            result = _coerce(value, option, where, sub_problems)
            if result is not _NO_MATCH:
                problems.extend(sub_problems)
                return result
        return _NO_MATCH
    if origin is Literal:
        return value if value in typing.get_args(tp) else _NO_MATCH
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str) and item_tp is str:
            # NeMo allows "a.json,b.json" for manifest lists
            return split_list(value)
        if not isinstance(value, (list, tuple)):
            return _NO_MATCH
        items = [_coerce(v, item_tp, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return _NO_MATCH if any(v is _NO_MATCH for v in items) else items
    if origin is dict:
        return value if isinstance(value, dict) else _NO_MATCH
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            return _NO_MATCH
        return build(typing.cast(type, tp), value, where, problems)
    if tp is bool:
        return value if isinstance(value, bool) else _NO_MATCH
    if tp is int:
        if isinstance(value, bool):
            return _NO_MATCH
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return _NO_MATCH
    if tp is float:
        if isinstance(value, bool):
            return _NO_MATCH
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 as a string
                return float(value)
            except ValueError:
                return _NO_MATCH
        return _NO_MATCH
    if tp is str:
        return value if isinstance(value, str) else _NO_MATCH
    return value if isinstance(value, tp) else _NO_MATCH


def build(cls: type, data: dict, where: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        here = f"{where}.{key}" if where else str(key)
        if key == "_target_":
            _check_target(cls, value, where or "config", problems)
            continue
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problems.append(
                f"{here}: unknown key. {hint}Valid keys under {where or 'the top level'}: {', '.join(sorted(fields))}"
            )
            continue
        if value == "???":
            problems.append(f"{here}: required value is missing (got ???). Set it in the YAML or as {here}=...")
            continue
        result = _coerce(value, hints[key], here, problems)
        if result is _NO_MATCH:
            problems.append(f"{here}: wrong type (expected {_type_name(hints[key])}, got {value!r})")
            continue
        kwargs[key] = result
    return cls(**kwargs)


def _walk(obj: Any, where: str = ""):
    """Yield (path, dataclass instance, field) for every field of every nested dataclass."""
    for f in dataclasses.fields(obj):
        here = f"{where}.{f.name}" if where else f.name
        yield here, obj, f
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, here)


def check_inert(cfg: NestConfig, problems: list[str]) -> list[str]:
    """Errors for inert keys that ask for something nestkit cannot do; notes for the others."""
    notes = []
    for where, owner, f in _walk(cfg):
        if "inert" not in f.metadata:
            continue
        value = getattr(owner, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if value == default:
            continue
        if f.metadata["must_keep_default"]:
            problems.append(f"{where}: not supported (expected {default!r}, got {value!r}). {f.metadata['inert']}")
        else:
            notes.append(f"{where}={value!r} has no effect: {f.metadata['inert']}")
    return notes
