"""Read manifests line by line, as training would, and report every line it would refuse or stumble on.

Each line goes through the trainer's own parsers (`decode_line`, `nemo_entry`, `lhotse_cut`), so a
line training rejects is an error here, with the trainer's message. What this module adds is not
stopping at the first bad line, a category for each failure, and the cross-line checks (duplicates,
cut ids that collide, duration limits). The audio uses it finds (`Entry`) are checked afterwards
in worker processes.

Paths resolve as training resolves them: a NeMo path relative to the manifest's folder, a lhotse
path relative to the working directory (lhotse opens it as written).
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass, field

from nestkit.core.errors import ManifestError
from nestkit.data.loading import file_segment
from nestkit.data.manifest import (
    FORMAT_LHOTSE,
    FORMAT_NEMO,
    NEMO_PATH_KEYS,
    decode_line,
    detect_format,
    lhotse_cut,
    line_duration,
    nemo_cut_id,
    nemo_entry,
)
from nestkit.data.manifest import _open_text as open_manifest  # the trainer's reader (gzip by suffix)
from nestkit.validate.categories import Finding, default_hint, expected_form, finding, hint_of


@dataclass(frozen=True)
class ManifestSource:
    path: str  # absolute
    noise: bool


@dataclass(slots=True)
class Entry:
    """One use of one audio file by one manifest line (a lhotse cut may use several files)."""

    source: int  # index into Scan.sources
    line: int
    path: str  # resolved
    offset: float
    duration: float | None  # None: missing or invalid in the manifest, to be measured
    partial: bool  # deliberately a part of the file: the line names an offset, or it is a lhotse cut
    noise: bool
    channel: int | None = None  # the channel training reads; None: the average of all channels


@dataclass
class Scan:
    sources: list[ManifestSource]
    entries: list[Entry] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    formats: list[str | None] = field(default_factory=list)  # per source; None if no line was recognised
    lines: int = 0  # non-blank lines, all manifests


@dataclass(frozen=True, slots=True)
class Use:
    """What the cross-line checks need of one audio use of a usable line."""

    cut_id: str | None  # the line's cut id, on its first use only
    audio: str
    offset: float
    duration: float
    channel: int | None = None  # the channel read (a lhotse MonoCut of a multi-channel file); None: all


_Usable = tuple[float, list[Use]]  # a usable line: its duration and its audio uses


@dataclass
class Seen:
    """Cross-line state: first line of each file segment and each cut id."""

    segments: dict[tuple, tuple[str, int]] = field(default_factory=dict)
    cut_ids: dict[str, tuple[str, int]] = field(default_factory=dict)


def scan_manifests(sources: list[ManifestSource], min_duration_s: float, max_duration_s: float) -> Scan:
    scan = Scan(sources)
    seen = Seen()
    for number, source in enumerate(sources):
        scan.formats.append(_scan_one(scan, seen, number, source, min_duration_s, max_duration_s))
    return scan


def _scan_one(
    scan: Scan,
    seen: Seen,
    source_index: int,
    source: ManifestSource,
    min_duration_s: float,
    max_duration_s: float,
) -> str | None:
    path, fmt, number, lines_here, corrupt = source.path, None, 0, 0, False
    try:
        with open_manifest(path) as stream:
            for number, raw in enumerate(stream, start=1):
                if not raw.strip():
                    _add(
                        scan,
                        path,
                        number,
                        "blank_line",
                        "blank line (expected one JSON object per line, got an empty line)",
                    )
                    continue
                lines_here += 1
                item = _decode(scan, raw, path, number)
                if item is None:
                    continue
                if fmt is None:
                    fmt = detect_format(item)
                    if fmt is None:
                        _add(
                            scan,
                            path,
                            number,
                            "unknown_format",
                            f"unrecognised line (expected a NeMo entry with "
                            f"audio_filepath or a lhotse cut with id and recording, got keys {sorted(item)})",
                        )
                        continue
                read_line = _nemo_line if fmt == FORMAT_NEMO else _lhotse_line
                usable = read_line(scan, item, source_index, source, number)
                if usable is not None:
                    duration, uses = usable
                    cross_checks(scan, seen, source, number, duration, uses, min_duration_s, max_duration_s)
    except (OSError, EOFError, zlib.error) as exc:
        corrupt = True
        _add(
            scan,
            path,
            number + 1,
            "manifest_corrupt",
            f"cannot read on (expected readable "
            f"{'gzip ' if path.endswith('.gz') else ''}JSON lines, got {type(exc).__name__}: {exc})",
        )
    scan.lines += lines_here
    if lines_here == 0 and not corrupt:  # a manifest that cannot be read is not reported as empty too
        _add(scan, path, 0, "empty_manifest", "no entries (expected at least one line, got none)")
    return fmt


def _add(scan: Scan, manifest: str, line: int, category: str, problem: str, audio: str | None = None) -> None:
    """A finding of ours about a line, worded like the trainer's ManifestError."""
    reason = str(ManifestError(manifest, line, problem, default_hint(category)))
    scan.findings.append(finding(manifest, line, audio, category, reason))


def line_reason(exc: ManifestError, category: str) -> str:
    """The trainer's message about a line, in the `(expected X, got Y)` form, with a hint."""
    problem = expected_form(category, exc.problem)
    return str(ManifestError(exc.manifest, exc.line, problem, hint_of(str(exc), exc.problem) or default_hint(category)))


def _decode(scan: Scan, raw: bytes, path: str, number: int) -> dict | None:
    """The line's JSON object; None (after a finding) if it is not one.

    NaN and Infinity are not JSON and the trainer refuses them, so such a line is always an error;
    when the non-finite value is the duration or offset, the line is let through to the checks that
    name that field (and --fix-durations can then measure a NaN duration).
    """
    try:
        return decode_line(raw, path, number)
    except ManifestError as exc:
        lenient = _json_allowing_non_finite(raw)
        bad = sorted(k for k, v in lenient.items() if isinstance(v, float) and not math.isfinite(v)) if lenient else []
        if bad and set(bad) <= {"duration", "offset"}:
            return lenient
        reason = line_reason(exc, "malformed_json")
        if bad:
            reason += f" (NaN/Infinity in {', '.join(bad)}: JSON has no such numbers)"
        scan.findings.append(finding(path, number, None, "malformed_json", reason))
        return None


def _json_allowing_non_finite(raw: bytes) -> dict | None:
    try:
        item = json.loads(raw.decode("utf-8"))  # str: no guessing at UTF-16 as json.loads(bytes) does
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack allows
        return None
    return item if isinstance(item, dict) else None


# ------------------------------------------------------------------------------------------------
# NeMo lines


def _nemo_line(scan: Scan, item: dict, source_index: int, source: ManifestSource, number: int) -> _Usable | None:
    """Record the line's audio use (an Entry) and return what the cross-line checks need, or None."""
    path = source.path
    try:
        entry = nemo_entry(item, path, number)
    except ManifestError as exc:
        category, measurable = nemo_failure(item, path, number)
        scan.findings.append(
            finding(path, number, measurable and measurable.path, category, line_reason(exc, category))
        )
        if measurable is not None:  # only the duration is wrong: still check the file, and measure it
            scan.entries.append(
                Entry(
                    source_index,
                    number,
                    measurable.path,
                    measurable.offset,
                    None,
                    item.get("offset") is not None,
                    source.noise,
                )
            )
        return None
    scan.entries.append(
        Entry(
            source_index,
            number,
            entry.path,
            entry.offset,
            entry.duration,
            item.get("offset") is not None,
            source.noise,
        )
    )
    return entry.duration, [Use(nemo_cut_id(entry, number), entry.path, entry.offset, entry.duration)]


def nemo_failure(item: dict, manifest: str, number: int):
    """Which field `nemo_entry` refused, found by asking it again with the others repaired.

    The trainer checks the path, then the duration, then the offset; the category names the first
    that fails, like the trainer's message. When only the duration is wrong, also returns the entry
    with that duration left to measure.
    """

    def accepts(**repaired):
        try:
            return nemo_entry({**item, **repaired}, manifest, number)
        except ManifestError:
            return None

    if accepts(duration=1.0, offset=0.0) is None:
        return ("missing_field" if not any(k in item for k in NEMO_PATH_KEYS) else "invalid_field"), None
    if accepts(offset=0.0) is None:
        return ("missing_field" if item.get("duration") is None else "invalid_duration"), accepts(duration=1.0)
    return "invalid_offset", None


# ------------------------------------------------------------------------------------------------
# lhotse lines


def _lhotse_line(scan: Scan, item: dict, source_index: int, source: ManifestSource, number: int) -> _Usable | None:
    path = source.path
    try:
        cut = lhotse_cut(item, path, number)
    except ManifestError as exc:
        if "id" not in item or "duration" not in item:
            category = "missing_field"
        else:
            try:
                line_duration(item, FORMAT_LHOTSE, path, number)
                category = "invalid_cut"
            except ManifestError:
                category = "invalid_duration"
        scan.findings.append(finding(path, number, None, category, line_reason(exc, category)))
        return None
    segment = file_segment(cut)  # what training reads itself; None: it hands the cut to lhotse
    if segment is not None:
        files = [(os.path.abspath(segment.path), segment.offset, segment.duration, segment.channel)]
    else:
        files = [
            (os.path.abspath(audio.source), float(part.start), float(part.duration), None)
            for part in _mono_parts(cut)
            if part.recording is not None
            for audio in part.recording.sources
            if audio.type == "file" and isinstance(audio.source, str)
        ]
        _add(
            scan,
            path,
            number,
            "not_checked",
            f"cut {cut.id}: lhotse loads it, only its local files are "
            f"checked (expected one local file without transforms, got a {type(cut).__name__} with "
            f"{len(files)} local file(s) and {_other_sources(cut)})",
        )
    uses: list[Use] = []
    for audio, start, duration, channel in files:
        scan.entries.append(Entry(source_index, number, audio, start, duration, True, source.noise, channel))
        uses.append(Use(None if uses else cut.id, audio, start, duration, channel))
    return float(cut.duration), uses


def _other_sources(cut) -> str:
    parts = [part for part in _mono_parts(cut) if part.recording is not None]
    kinds = sorted({a.type for part in parts for a in part.recording.sources if a.type != "file"})
    transformed = any(part.recording.transforms for part in parts)
    described = [f"{', '.join(kinds)} source(s)"] if kinds else []
    described += ["transforms"] if transformed else []
    return " and ".join(described) or "no other sources"


def _mono_parts(cut):
    """The single-recording cuts inside a cut (a MixedCut's tracks; padding has no audio)."""
    tracks = getattr(cut, "tracks", None)
    if tracks is None:
        return [] if type(cut).__name__ == "PaddingCut" else [cut]
    return [part for track in tracks for part in _mono_parts(track.cut)]


# ------------------------------------------------------------------------------------------------
# Checks across lines


def cross_checks(
    scan: Scan,
    seen: Seen,
    source: ManifestSource,
    number: int,
    duration: float,
    uses: list[Use],
    min_duration_s: float,
    max_duration_s: float,
) -> None:
    path = source.path
    for use in uses:
        key = (source.noise, use.audio, round(use.offset, 6), round(use.duration, 6), use.channel)
        first = seen.segments.setdefault(key, (path, number))
        if first != (path, number):
            _add(
                scan,
                path,
                number,
                "duplicate",
                f"the same audio segment again (expected each file segment once, "
                f"got a repeat of {first[0]}:{first[1]})",
                use.audio,
            )
            break
    if source.noise:
        return  # noise ids are never looked up, and noise length is not planned
    for use in uses:
        first = seen.cut_ids.setdefault(use.cut_id, (path, number)) if use.cut_id is not None else (path, number)
        if first != (path, number):
            _add(
                scan,
                path,
                number,
                "duplicate_id",
                f"cut id {use.cut_id!r} is taken (expected unique ids, got the id of {first[0]}:{first[1]})",
                use.audio,
            )
    audio = uses[0].audio if uses else None
    if min_duration_s and duration < min_duration_s:
        _add(
            scan,
            path,
            number,
            "too_short",
            f"too short (expected >= {min_duration_s:g} s, got {duration:g} s)",
            audio,
        )
    if max_duration_s and duration > max_duration_s:
        _add(
            scan,
            path,
            number,
            "too_long",
            f"too long (expected <= {max_duration_s:g} s, got {duration:g} s)",
            audio,
        )
