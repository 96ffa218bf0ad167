"""Loading: YAML (NeMo layout or native) + `dotted.key=value` overrides -> a validated NestConfig.

Relative paths inside a YAML file are relative to that file's folder; relative paths given as
overrides are relative to the current folder. Every problem is reported at once.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from nestkit.config.checks import check
from nestkit.config.coerce import build, check_inert, split_list
from nestkit.config.derive import derive
from nestkit.config.schema import NestConfig
from nestkit.core.errors import ConfigError


def _resolve_paths(data: Any, cls: type, base: Path) -> None:
    """Make relative path fields in `data` (a plain dict for `cls`) absolute against `base`."""
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in data or data[f.name] is None:
            continue
        value = data[f.name]
        if f.metadata.get("path"):
            data[f.name] = _absolute(value, base)
            continue
        inner = hints[f.name]
        for option in typing.get_args(inner) or (inner,):
            if isinstance(option, type) and dataclasses.is_dataclass(option):
                _resolve_paths(value, option, base)


def _absolute(value: Any, base: Path) -> Any:
    if isinstance(value, str):
        parts = split_list(value)
        if len(parts) > 1:  # NeMo's comma-joined manifest lists
            return ",".join(_absolute(v, base) for v in parts)
        if value == "???" or "${" in value or os.path.isabs(value) or "://" in value:
            return value  # URLs (shards over HTTP) stay as they are
        return str((base / value).resolve())
    if isinstance(value, (list, tuple)):
        return [_absolute(v, base) for v in value]
    if isinstance(value, dict):  # shar_path: {field: path pattern}
        return {k: _absolute(v, base) for k, v in value.items()}
    return value


@dataclass
class LoadedConfig:
    config: NestConfig
    source: Optional[str]
    notes: list[str]  # accepted keys that have no effect, for the user to see once


def config_from_dict(data: dict, source: Optional[str] = None, base_dir: Optional[Path] = None) -> LoadedConfig:
    """Build and validate a config from plain (already interpolated) data."""
    if base_dir is not None:
        _resolve_paths(data, NestConfig, base_dir)
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"top level: expected a mapping, got {type(data).__name__}"], source)
    cfg = build(NestConfig, data, "", problems)
    notes = check_inert(cfg, problems)
    if not problems:
        derive(cfg)
        check(cfg, problems)
    if problems:
        raise ConfigError(problems, source)
    return LoadedConfig(cfg, source, notes)


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> LoadedConfig:
    """Read a YAML config (NeMo layout or native), apply `dotted.key=value` overrides, validate.

    Relative paths inside the YAML are relative to the YAML's folder; relative paths given as
    overrides are relative to the current folder.
    """
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: no such config file (expected a YAML file)"], str(path))
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_problem(exc, str(path))], str(path)) from None
    except (OmegaConfBaseException, OSError, ValueError) as exc:
        raise ConfigError([f"cannot parse YAML: {exc}"], str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"top level: expected a mapping, got {type(raw).__name__}"], str(path))
    _resolve_paths(raw, NestConfig, path.parent.resolve())
    problems = [f"override {o!r}: expected dotted.key=value" for o in overrides if "=" not in o]
    if problems:
        raise ConfigError(problems, str(path))
    try:
        merged = OmegaConf.merge(OmegaConf.create(raw), OmegaConf.from_dotlist(list(overrides)))
        override_data = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=False)
        _resolve_paths(override_data, NestConfig, Path.cwd())
        merged = OmegaConf.merge(merged, OmegaConf.create(override_data))
        data = OmegaConf.to_container(merged, resolve=True)
    except yaml.YAMLError as exc:
        raise ConfigError(
            [f"an override is not valid YAML: {str(exc).splitlines()[0]}. Quote the value, e.g. key='[1, 2]'"],
            str(path),
        ) from None
    except OmegaConfBaseException as exc:
        raise ConfigError([f"cannot resolve config: {exc}".splitlines()[0]], str(path)) from None
    return config_from_dict(typing.cast(dict, data), source=str(path))


def yaml_problem(exc: Exception, path: str) -> str:
    """`FILE:LINE:COLUMN: YAML syntax error: <what the parser says>. <hint>` from a PyYAML error."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    text = f"{where}: YAML syntax error: {problem}" + (f" ({context})" if context else "")
    if mark is not None and "\t" in _line_of(path, mark.line):
        text += ". YAML indents with spaces, not tabs: replace the tab on that line"
    return text


def _line_of(path: str, number: int) -> str:
    try:
        with open(path, errors="replace") as f:
            for i, line in enumerate(f):
                if i == number:
                    return line
    except OSError:
        pass
    return ""


def config_to_dict(cfg: NestConfig) -> dict:
    """Plain data for YAML, with the derived fields filled in (what the run really used)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: NestConfig, path: str | os.PathLike) -> None:
    import yaml

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
