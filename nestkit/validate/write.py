"""Write repaired manifests: without the failing lines (--write-clean), or with measured durations
(--fix-durations).

Lines are copied byte for byte unless something in them must change. A NeMo path that is relative
to the manifest's folder is rewritten relative to the output's folder, so the written manifest
finds the same files. With one manifest the output is a file; with several it is a folder that gets
one file per manifest under the same name.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass

import orjson

from nestkit.data.manifest import FORMAT_NEMO, NEMO_PATH_KEYS
from nestkit.data.manifest import _open_text as open_manifest
from nestkit.validate.categories import ERROR
from nestkit.validate.validator import Report

# Lines whose file could not be measured reliably keep the duration they have.
_UNMEASURABLE = {"decode_error", "timeout", "worker_crash", "internal_error", "offset_beyond_end", "empty"}


@dataclass(frozen=True)
class Written:
    source: str
    target: str
    kept: int  # lines written
    dropped: int  # lines left out (--write-clean)
    changed: int  # durations rewritten (--fix-durations)
    unmeasured: int  # lines whose duration could not be measured (--fix-durations)


def output_paths(manifests: list[str], out: str) -> dict[str, str]:
    """Manifest -> output path. Raises ValueError (a usage error) on a collision or an input overwrite."""
    manifests = [os.path.abspath(m) for m in manifests]
    if len(manifests) == 1 and not (out.endswith(os.sep) or os.path.isdir(out)):
        targets = {manifests[0]: os.path.abspath(out)}
    else:
        targets = {m: os.path.abspath(os.path.join(out, os.path.basename(m))) for m in manifests}
        names = [os.path.basename(m) for m in manifests]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise ValueError(
                f"output {out}: several manifests have the same file name (expected distinct names, "
                f"got {', '.join(clashes)} more than once). Rename one of them"
            )
    for source, target in targets.items():
        if os.path.exists(target) and os.path.samefile(source, target):
            raise ValueError(
                f"output {target}: is the input manifest (expected a new path, got the input). "
                f"Write to another path and compare before replacing it"
            )
    return targets


def _relocate(item: dict, manifest: str, target: str) -> bool:
    """Rewrite a relative NeMo audio path for a manifest written to `target`; True if it changed."""
    source_dir, target_dir = os.path.dirname(manifest), os.path.dirname(target)
    key = next((k for k in NEMO_PATH_KEYS if k in item), None)
    value = item.get(key) if key else None
    if source_dir == target_dir or not isinstance(value, str) or not value or os.path.isabs(value):
        return False
    item[key] = os.path.relpath(os.path.normpath(os.path.join(source_dir, value)), target_dir)
    return True


def _parse(raw: bytes) -> dict:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)  # NaN durations, which --fix-durations replaces


def _dump(item: dict) -> bytes:
    return orjson.dumps(item) + b"\n"


def _open_output(target: str):
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    return gzip.open(target, "wb") if target.endswith(".gz") else open(target, "wb")


def _lines(path: str):
    """(line number, bytes ending in a newline); stops quietly where a damaged manifest stops being
    readable (the report has a `manifest_corrupt` finding there)."""
    try:
        with open_manifest(path) as stream:
            for number, raw in enumerate(stream, start=1):
                yield number, raw if raw.endswith(b"\n") else raw + b"\n"
    except (OSError, EOFError, zlib.error):
        return


def write_clean(report: Report, targets: dict[str, str]) -> list[Written]:
    failing = report.failing_lines()
    written = []
    for number, source in enumerate(report.scan.sources):
        if source.path not in targets:
            continue
        target, nemo = targets[source.path], report.scan.formats[number] == FORMAT_NEMO
        kept = dropped = 0
        with _open_output(target) as out:
            for line, raw in _lines(source.path):
                if not raw.strip():
                    continue
                if (source.path, line) in failing:
                    dropped += 1
                    continue
                if nemo:
                    item = _parse(raw)
                    if _relocate(item, source.path, target):
                        raw = _dump(item)
                out.write(raw)
                kept += 1
        written.append(Written(source.path, target, kept, dropped, 0, 0))
    return written


def measured_durations(report: Report, source_index: int) -> dict[int, float | None]:
    """Line -> duration measured from its file (None: not measurable), for NeMo lines with a file check."""
    blocked = {(f.manifest, f.line) for f in report.findings if f.category in _UNMEASURABLE and f.severity == ERROR}
    path = report.scan.sources[source_index].path
    durations: dict[int, float | None] = {}
    for entry, result in zip(report.scan.entries, report.results):
        if entry.source != source_index:
            continue
        if result is None or not result.sample_rate or not result.frames or (path, entry.line) in blocked:
            durations[entry.line] = None
            continue
        available = result.frames / result.sample_rate - entry.offset
        if available <= 0:
            durations[entry.line] = None
        elif entry.partial and entry.duration is not None:
            durations[entry.line] = round(min(entry.duration, available), 6)  # a segment only shrinks to fit
        else:
            durations[entry.line] = round(available, 6)
    return durations


def write_fixed_durations(report: Report, targets: dict[str, str]) -> list[Written]:
    """Every line kept; NeMo durations replaced by the measured ones (lhotse lines are copied as they are)."""
    written = []
    for number, source in enumerate(report.scan.sources):
        if source.path not in targets:
            continue
        target, nemo = targets[source.path], report.scan.formats[number] == FORMAT_NEMO
        durations = measured_durations(report, number) if nemo else {}
        kept = changed = unmeasured = 0
        with _open_output(target) as out:
            for line, raw in _lines(source.path):
                if not raw.strip():
                    continue
                kept += 1
                if not nemo:
                    out.write(raw)
                    continue
                measured = durations.get(line)
                unmeasured += measured is None
                try:
                    item = _parse(raw)
                except (ValueError, RecursionError):  # malformed or nested too deep
                    item = None
                if not isinstance(item, dict):  # not a JSON object: kept as it is, still an error
                    out.write(raw)
                    continue
                dirty = _relocate(item, source.path, target)
                if measured is not None and item.get("duration") != measured:
                    item["duration"] = measured
                    changed += 1
                    dirty = True
                out.write(_dump(item) if dirty else raw)
        written.append(Written(source.path, target, kept, 0, changed, unmeasured))
    return written
