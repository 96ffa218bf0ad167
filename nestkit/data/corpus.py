"""What a dataset section names: per-file manifests, lhotse Shar shards, or a NeMo tarred dataset.

NeMo's own keys, read as NeMo reads them (nemo/collections/common/data/lhotse/cutset.py, nemo_adapters.py):

* `shar_path` (lhotse Shar; it wins over manifest_filepath, as in NeMo): a directory; a list of
  directories or of `[directory, weight]` pairs; or `{field: path pattern}` with `cuts` and `recording`
  (patterns expanded as NeMo expands them; the only form that takes URLs, since a directory over HTTP
  cannot be listed).
* `is_tarred: true` + `tarred_audio_filepaths` (brace or `_OP_a..b_CL_` patterns, or a list) with
  `manifest_filepath`: one manifest whose lines carry `shard_id`, or one manifest per shard whose name
  carries the shard id (`manifest_3.json`).
* otherwise `manifest_filepath`: NeMo JSON lines or lhotse cuts, one audio file per line.

A corpus is resolved to its files (directories listed, patterns expanded), so that the index built over
it can tell when any of them changed or appeared.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nestkit.core.errors import ConfigError
from nestkit.data.shards.nemo_tarred import expand_nemo_paths, shard_id_of, tar_shard_ids, unnamed_shard
from nestkit.data.shards.ranged import is_url
from nestkit.data.shards.shar import discover_shar, shar_from_fields

KIND_MANIFEST = "manifest"
KIND_SHAR = "shar"
KIND_TARRED = "nemo_tarred"
SHAR_AUDIO_FIELD = "recording"  # the only Shar field NEST reads; lhotse's name for the audio


@dataclass(frozen=True)
class SourceGroup:
    """The cuts files one entry of a `shar_path` list gave, and the weight the entry asked for."""

    label: str  # the directory as the config names it
    first: int  # index into Corpus.manifests
    end: int
    weight: float | None


@dataclass(frozen=True)
class Corpus:
    kind: str  # KIND_MANIFEST | KIND_SHAR | KIND_TARRED
    key: str  # which config key named it, for messages (e.g. "model.train_ds.shar_path")
    manifests: tuple[str, ...]  # per-file manifests, Shar cuts files or tarred manifests (paths or URLs)
    # Shar: the recording tar of each cuts file (None when it has none); tarred: every tar, in config order
    shards: tuple[str | None, ...] = ()
    shard_ids: tuple[int, ...] = ()  # tarred: NeMo's shard id of each tar
    manifest_shard_ids: tuple[int | None, ...] = ()  # tarred, one manifest per shard: the id in its name
    groups: tuple[SourceGroup, ...] = ()
    home: str | None = None  # the folder an index goes "beside the data" (None: the cache only)
    notices: tuple[str, ...] = field(default=(), compare=False)

    @property
    def sharded(self) -> bool:
        return self.kind != KIND_MANIFEST

    def identity(self) -> dict:
        """What names this corpus for its index (files, not contents: staleness is checked apart)."""
        return {
            "kind": self.kind,
            "manifests": list(self.manifests),
            "shards": list(self.shards),
            "shard_ids": list(self.shard_ids),
            "manifest_shard_ids": list(self.manifest_shard_ids),
        }


def _local_dir(path: str) -> str | None:
    return None if is_url(path) else os.path.dirname(os.path.abspath(path))


def manifest_corpus(paths: str | os.PathLike | Sequence[str | os.PathLike], key: str = "manifest_filepath") -> Corpus:
    """Per-file manifests, joined in order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    manifests = tuple(os.fspath(p) if is_url(os.fspath(p)) else os.path.abspath(os.fspath(p)) for p in paths)
    return Corpus(KIND_MANIFEST, key, manifests, home=_local_dir(manifests[0]) if manifests else None)


def dataset_corpus(ds: Any, where: str) -> Corpus:
    """The corpus of a dataset section (`model.train_ds` / `model.validation_ds`)."""
    if ds.shar_path is not None:
        notices = []
        if ds.manifest_filepath:
            notices.append(f"{where}.manifest_filepath is not read: shar_path is set and wins, as in NeMo")
        corpus = shar_corpus(ds.shar_path, f"{where}.shar_path")
        return Corpus(**{**corpus.__dict__, "notices": tuple(notices) + corpus.notices})
    if is_tarred(ds):
        return tarred_corpus(ds.manifest_filepath, ds.tarred_audio_filepaths, where)
    return manifest_corpus(ds.manifest_filepath, f"{where}.manifest_filepath")


def is_tarred(ds: Any) -> bool:
    """A NeMo tarred dataset: `is_tarred: true` (the config check refuses tarred_audio_filepaths without it)."""
    return bool(ds.is_tarred)


# ------------------------------------------------------------------------------------------------
# lhotse Shar


def shar_corpus(spec: Any, key: str = "shar_path") -> Corpus:
    """`shar_path` in any of NeMo's forms -> the cuts files and their recording tars, in order."""
    if isinstance(spec, dict):
        return _shar_fields(spec, key)
    if isinstance(spec, (str, os.PathLike)):
        entries: list[tuple[str, float | None]] = [(os.fspath(spec), None)]
    elif isinstance(spec, (list, tuple)):
        entries = []
        for i, item in enumerate(spec):
            if isinstance(item, (str, os.PathLike)):
                entries.append((os.fspath(item), None))
            elif (
                isinstance(item, (list, tuple))
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], (int, float))
                and not isinstance(item[1], bool)
                and item[1] > 0
            ):
                entries.append((item[0], float(item[1])))
            else:
                raise ConfigError(
                    [
                        f"{key}[{i}]: expected a directory or [directory, positive weight] (got {item!r}), "
                        "as NeMo's shar_path takes them"
                    ]
                )
    else:
        raise ConfigError(
            [
                f"{key}: expected a directory, a list of directories or [directory, weight] pairs, or "
                f"{{cuts: ..., recording: ...}} (got {spec!r})"
            ]
        )
    if not entries:
        raise ConfigError([f"{key}: empty (expected at least one Shar directory)"])
    weighted = [w is not None for _, w in entries]
    if any(weighted) and not all(weighted):
        raise ConfigError([f"{key}: give a weight for every directory or for none (NeMo asserts the same)"])
    manifests: list[str] = []
    shards: list[str | None] = []
    groups: list[SourceGroup] = []
    notices: list[str] = []
    for directory, weight in entries:
        if is_url(directory):
            raise ConfigError(
                [
                    f"{key}: {directory} is a URL, and a directory cannot be listed over HTTP (expected a local "
                    "directory). Name the files instead: shar_path: {cuts: <url>/cuts._OP_000000..000009_CL_.jsonl.gz, "
                    "recording: <url>/recording._OP_000000..000009_CL_.tar}"
                ]
            )
        directory = os.path.abspath(directory)
        if not os.path.isdir(directory):
            raise ConfigError([f"{key}: {directory}: no such directory (expected a lhotse Shar directory)"])
        layout = discover_shar(directory)
        usable = [f for f in layout.findings if f.kind != "foreign_file"]
        if not layout.shards:
            raise ConfigError([f"{key}: {directory}: not a Shar directory (expected cuts.NNNNNN.jsonl.gz files)"])
        first = len(manifests)
        for shard in layout.shards:
            manifests.append(shard.cuts)
            shards.append(shard.fields.get(SHAR_AUDIO_FIELD))
        groups.append(SourceGroup(directory, first, len(manifests), weight))
        notices += _shar_notices(directory, layout, usable)
    return Corpus(
        KIND_SHAR,
        key,
        tuple(manifests),
        tuple(shards),
        groups=tuple(groups),
        home=groups[0].label,
        notices=tuple(notices),
    )


def _shar_notices(label: str, layout, findings) -> list[str]:
    notices = [f"shar {label}: {f.detail}" for f in findings if f.kind in ("gap", "field_missing")]
    foreign = [f.where for f in layout.findings if f.kind == "foreign_file"]
    if foreign:
        notices.append(
            f"shar {label}: {len(foreign)} file(s) that are not Shar shards ({os.path.basename(foreign[0])}"
            f"{', ...' if len(foreign) > 1 else ''}): nestkit ignores them, lhotse's own reader would fail on them"
        )
    extra = sorted({f for s in layout.shards for f in s.fields} - {SHAR_AUDIO_FIELD})
    if extra:
        notices.append(f"shar {label}: field(s) {', '.join(extra)} not read (NEST pre-training reads the audio only)")
    return notices


def _shar_fields(spec: dict, key: str) -> Corpus:
    if "cuts" not in spec or SHAR_AUDIO_FIELD not in spec:
        raise ConfigError(
            [f"{key}: a mapping needs 'cuts' and '{SHAR_AUDIO_FIELD}' (got keys {sorted(spec)}); NEST reads the audio"]
        )
    try:
        layout = shar_from_fields({k: spec[k] for k in ("cuts", SHAR_AUDIO_FIELD)})
    except ConfigError as err:
        raise ConfigError([f"{key}.{p}" for p in err.problems]) from None
    counts = {name: len(expand_nemo_paths(spec[name], f"{key}.{name}")) for name in ("cuts", SHAR_AUDIO_FIELD)}
    if counts["cuts"] != counts[SHAR_AUDIO_FIELD]:
        raise ConfigError(
            [
                f"{key}: {counts['cuts']} cuts file(s) but {counts[SHAR_AUDIO_FIELD]} {SHAR_AUDIO_FIELD} tar(s) "
                "(expected one tar per cuts file, paired by position as lhotse pairs them)"
            ]
        )
    manifests = tuple(s.cuts for s in layout.shards)
    shards = tuple(s.fields.get(SHAR_AUDIO_FIELD) for s in layout.shards)
    extra = sorted(set(spec) - {"cuts", SHAR_AUDIO_FIELD})
    notices = [f"{key}: field(s) {', '.join(extra)} not read (NEST pre-training reads the audio only)"] if extra else []
    home = None if is_url(manifests[0]) else os.path.dirname(os.path.abspath(manifests[0]))
    return Corpus(
        KIND_SHAR,
        key,
        manifests,
        shards,
        groups=(SourceGroup(key, 0, len(manifests), None),),
        home=home,
        notices=tuple(notices),
    )


# ------------------------------------------------------------------------------------------------
# NeMo tarred


def tarred_corpus(manifest_spec: Sequence[str] | str, tar_spec: Any, where: str) -> Corpus:
    """`manifest_filepath` + `tarred_audio_filepaths`, expanded and given NeMo's shard ids."""
    if isinstance(manifest_spec, str):
        manifest_spec = [manifest_spec]
    manifests = [m for spec in manifest_spec for m in expand_nemo_paths(spec, f"{where}.manifest_filepath")]
    if isinstance(tar_spec, (list, tuple)) and any(not isinstance(t, str) for t in tar_spec):
        raise ConfigError(
            [
                f"{where}.tarred_audio_filepaths: expected a path pattern or a list of paths (got {tar_spec!r}); "
                "nested lists (NeMo's buckets) are not supported"
            ]
        )
    tars = expand_nemo_paths(tar_spec, f"{where}.tarred_audio_filepaths")
    if not manifests or not tars:
        raise ConfigError([f"{where}: a tarred dataset needs manifest_filepath and tarred_audio_filepaths"])
    notices = []
    ids: list[int] = []
    by_id: dict[int, str] = {}
    for position, (tar, (sid, named)) in enumerate(zip(tars, tar_shard_ids(tars))):
        if not named:
            notices.append(f"{where}.tarred_audio_filepaths: {unnamed_shard(tar, position)}")
        if sid in by_id:
            notices.append(
                f"{where}.tarred_audio_filepaths: shard id {sid} named twice ({by_id[sid]}, {tar}); the last is used, "
                "as NeMo's reader does"
            )
        by_id[sid] = tar
        ids.append(sid)
    manifests = [m if is_url(m) else os.path.abspath(m) for m in manifests]
    manifest_ids = tuple(shard_id_of(m, "manifest") for m in manifests) if len(manifests) > 1 else (None,)
    return Corpus(
        KIND_TARRED,
        f"{where}.manifest_filepath",
        tuple(manifests),
        tuple(t if is_url(t) else os.path.abspath(t) for t in tars),
        tuple(ids),
        manifest_ids,
        home=_local_dir(manifests[0]),
        notices=tuple(notices),
    )
