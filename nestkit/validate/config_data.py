"""The data a training config names, for `validate-manifest --config`: what users have is the YAML.

Each dataset section (`model.train_ds`, `model.validation_ds`) gives, with NeMo's keys:

* `shar_path`: a lhotse Shar dataset -- a directory, a list of directories (or `[directory, weight]`
  pairs), or a `{field: paths}` mapping whose values NeMo expands (braces, `_OP_a..b_CL_`; URLs allowed);
* `is_tarred: true`: a NeMo tarred dataset -- `manifest_filepath` and `tarred_audio_filepaths`;
* otherwise `manifest_filepath`: per-file manifests (a list, or NeMo's comma-joined string);
* `noise_manifest`: noise manifests, checked with the noise rules.

Only these keys are read (YAML with OmegaConf's `${...}` interpolation), not the whole typed config: a
data check must not fail on a model key, and must run without the training extras. Relative paths are
relative to the YAML's folder, as for every path in a nestkit config; URLs are kept as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from nestkit.core.errors import ConfigError
from nestkit.validate.shards import ShardSource, SharSource, TarredSource

SECTIONS = ("train_ds", "validation_ds")


@dataclass
class ConfigData:
    manifests: list[str] = field(default_factory=list)
    noise: list[str] = field(default_factory=list)
    shards: list[ShardSource] = field(default_factory=list)
    described: list[str] = field(default_factory=list)  # one line per dataset found, for the user


def read_config_data(path: str) -> ConfigData:
    """The datasets of every dataset section of the config at `path`. Raises ConfigError."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML ({str(exc).splitlines()[0]})"], path) from None
    except (OmegaConfBaseException, OSError, ValueError) as exc:
        raise ConfigError([f"cannot read it ({str(exc).splitlines()[0]})"], path) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"top level: expected a mapping, got {type(raw).__name__}"], path)
    model: dict = raw["model"] if isinstance(raw.get("model"), dict) else raw
    base = os.path.dirname(os.path.abspath(path))
    data, problems = ConfigData(), list[str]()
    for name in SECTIONS:
        section = model.get(name)
        if isinstance(section, dict):
            _read_section(section, f"model.{name}", base, data, problems)
    if problems:
        raise ConfigError(problems, path)
    if not (data.manifests or data.noise or data.shards):
        raise ConfigError(
            [
                f"no data found (expected manifest_filepath, shar_path or is_tarred with tarred_audio_filepaths "
                f"in {' or '.join(f'model.{s}' for s in SECTIONS)})"
            ],
            path,
        )
    return data


def _read_section(section: dict, where: str, base: str, data: ConfigData, problems: list[str]) -> None:
    shar, tarred = section.get("shar_path"), bool(section.get("is_tarred"))
    manifests = _given(section.get("manifest_filepath"))
    if shar is not None:
        for shar_source in _shar_sources(shar, f"{where}.shar_path", base, problems):
            data.shards.append(shar_source)
            data.described.append(f"{where}.shar_path: {shar_source.directory or shar_source.fields} (lhotse Shar)")
    elif tarred:
        tars = _given(section.get("tarred_audio_filepaths"))
        if manifests is None or tars is None:
            problems.append(
                f"{where}: is_tarred is true but {'manifest_filepath' if manifests is None else 'tarred_audio_filepaths'}"
                " is not set (expected both: the tarred manifest(s) and the tar paths)"
            )
        else:
            source = TarredSource(_absolute(manifests, base), _absolute(tars, base), f"{where}.tarred_audio_filepaths")
            data.shards.append(source)
            data.described.append(f"{where}: {source.manifests} with {source.tars} (NeMo tarred)")
    elif manifests is not None:
        paths = _split(_absolute(manifests, base))
        data.manifests += paths
        data.described.append(f"{where}.manifest_filepath: {', '.join(paths)}")
    noise = _given(section.get("noise_manifest"))
    if noise is not None:
        paths = _split(_absolute(noise, base))
        data.noise += paths
        data.described.append(f"{where}.noise_manifest: {', '.join(paths)} (noise)")


def _given(value: Any) -> Any:
    """None for what a NeMo config leaves unset (null, '???', an empty list)."""
    return None if value in (None, "???", "", []) else value


def _shar_sources(value: Any, where: str, base: str, problems: list[str]) -> list[SharSource]:
    if isinstance(value, dict):
        return [SharSource(fields={k: _absolute(v, base) for k, v in value.items()}, origin=where)]
    items = value if isinstance(value, list) else [value]
    sources: list[SharSource] = []
    for item in items:
        directory = item[0] if isinstance(item, list) and item else item  # [path, weight]
        if not isinstance(directory, str):
            problems.append(f"{where}: expected a directory, a list of them or {{field: paths}}, got {item!r}")
        elif directory.startswith(("http://", "https://")):
            problems.append(
                f"{where}: {directory} is a URL (expected a local directory: a remote Shar dataset is named "
                "field by field, shar_path: {cuts: URL pattern, recording: URL pattern})"
            )
        else:
            sources.append(SharSource(directory=_absolute(directory, base), origin=where))
    return sources


def _absolute(value: Any, base: str) -> Any:
    """A local relative path (pattern) made absolute against the YAML's folder; URLs and lists item by item."""
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    if not isinstance(value, str) or value.startswith(("http://", "https://")) or os.path.isabs(value):
        return value
    if "," in value and "{" not in value:  # NeMo's comma-joined manifest lists (a brace pattern has commas too)
        return ",".join(_absolute(v.strip(), base) for v in value.split(","))
    return os.path.normpath(os.path.join(base, value))


def _split(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [p.strip() for item in items for p in str(item).split(",") if p.strip()]
