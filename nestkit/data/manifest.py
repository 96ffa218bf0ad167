"""Manifest lines (NeMo JSON lines or lhotse cuts) -> checked fields and lhotse cuts, without opening audio.

The cut index (`nestkit.data.index`) stores where each usable line is; this module says what a line
means. Every cut remembers where it came from: `cut.custom["manifest"]` and `cut.custom["line"]`
(1-based). A NeMo line becomes a `MonoCut` whose id is `<audio file stem>-L<line>`; relative audio
paths are relative to the manifest's folder. NeMo manifests do not record a sampling rate, so such a
cut's recording carries the nominal target rate: the loader reads the real rate from the file.
A line that cannot be used raises `ManifestError` naming manifest:line, the problem and the fix.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast, overload

import numpy as np
import orjson

from nestkit.core.errors import ManifestError

if TYPE_CHECKING:
    from lhotse import MonoCut
    from lhotse.cut import Cut

# lhotse (and through it torch) is imported only where cuts are built: indexing a manifest and
# validating it need neither, and `nestkit validate-manifest` starts in a fraction of a second.

NEMO_PATH_KEYS = ("audio_filepath", "audio_filename")
FORMAT_NEMO = "nemo"
FORMAT_LHOTSE = "lhotse"


# ------------------------------------------------------------------------------------------------
# One line


@dataclass(frozen=True)
class NemoEntry:
    """The fields of a NeMo manifest line that pre-training uses."""

    path: str  # absolute
    offset: float  # seconds
    duration: float  # seconds


@overload
def _number(item: dict, key: str, manifest: str, line: int, required: Literal[True]) -> float: ...
@overload
def _number(item: dict, key: str, manifest: str, line: int, required: Literal[False]) -> float | None: ...
def _number(item: dict, key: str, manifest: str, line: int, required: bool) -> float | None:
    if key not in item or item[key] is None:
        if required:
            raise ManifestError(
                manifest,
                line,
                f"missing '{key}' (expected a number of seconds)",
                "Add it, or run `nestkit validate-manifest --fix-durations OUT` to measure it",
            )
        return None
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ManifestError(manifest, line, f"invalid {key} (expected a number of seconds, got {value!r})")
    if not math.isfinite(value):
        raise ManifestError(manifest, line, f"invalid {key} (expected a finite number, got {value!r})")
    return float(value)


def decode_line(text: bytes | str, manifest: str, line: int) -> dict:
    try:
        item = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        problem, hint = _json_problem(text, exc)
        raise ManifestError(manifest, line, f"malformed JSON ({problem})", hint) from None
    if not isinstance(item, dict):
        kind = _JSON_KINDS.get(type(item), type(item).__name__)
        raise ManifestError(
            manifest,
            line,
            f"not a JSON object (expected one JSON object per line, got a JSON {kind})",
            "Each line must be one JSON object",
        )
    return item


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _json_problem(text: bytes | str, exc: Exception) -> tuple[str, str]:
    """What is wrong with a line orjson refused, and the hint: the encoding, when that is the cause."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if raw.startswith(b"\xef\xbb\xbf"):
        return (
            "a UTF-8 byte order mark (BOM) before the JSON",
            "Save the manifest as UTF-8 without a BOM (NeMo refuses it too)",
        )
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or raw[1:2] == b"\x00" or raw[:1] == b"\x00":
        return ("UTF-16 text, or NUL bytes", "Convert the manifest to UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8`)")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (
            f"bytes that are not UTF-8 at byte {bad.start}",
            "Manifests are UTF-8 JSON lines: re-encode the file as UTF-8",
        )
    return str(exc), "Each line must be one JSON object"


def _nemo_fields(item: dict, manifest: str, line: int) -> tuple[str, float, float]:
    """(path as written, offset, duration) of a decoded NeMo line, validated."""
    key = "audio_filepath" if "audio_filepath" in item else "audio_filename" if "audio_filename" in item else None
    if key is None:
        raise ManifestError(
            manifest,
            line,
            f"missing audio path (expected 'audio_filepath' or 'audio_filename', got keys {sorted(item)})",
        )
    path = item[key]
    if not isinstance(path, str) or not path:
        raise ManifestError(manifest, line, f"invalid {key} (expected a non-empty string, got {path!r})")
    if "\0" in path:
        raise ManifestError(
            manifest,
            line,
            f"invalid {key} (expected a path without NUL characters, got {path!r})",
            "No file name can contain one: fix the path",
        )
    duration = _number(item, "duration", manifest, line, required=True)
    if duration <= 0:
        raise ManifestError(
            manifest,
            line,
            f"invalid duration (expected > 0 seconds, got {duration})",
            "Remove the line or fix it with `nestkit validate-manifest --fix-durations OUT`",
        )
    offset = _number(item, "offset", manifest, line, required=False) or 0.0
    if offset < 0:
        raise ManifestError(manifest, line, f"invalid offset (expected >= 0 seconds, got {offset})")
    return path, offset, duration


def nemo_entry(item: dict, manifest: str, line: int) -> NemoEntry:
    """Validate a decoded NeMo line and resolve its audio path against the manifest's folder."""
    path, offset, duration = _nemo_fields(item, manifest, line)
    if not os.path.isabs(path):
        path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(manifest)), path))
    return NemoEntry(path=path, offset=offset, duration=duration)


def nemo_cut_id(entry: NemoEntry, line: int) -> str:
    return f"{Path(entry.path).stem}-L{line}"


def nemo_cut(entry: NemoEntry, manifest: str, line: int, sampling_rate: int) -> MonoCut:
    from lhotse import MonoCut, Recording
    from lhotse.audio import AudioSource
    from lhotse.utils import compute_num_samples

    cut_id = nemo_cut_id(entry, line)
    end = entry.offset + entry.duration
    recording = Recording(
        id=cut_id,
        sources=[AudioSource(type="file", channels=[0], source=entry.path)],
        sampling_rate=sampling_rate,
        num_samples=compute_num_samples(end, sampling_rate),
        duration=end,
    )
    return MonoCut(
        id=cut_id,
        start=entry.offset,
        duration=entry.duration,
        channel=0,
        recording=recording,
        custom={"manifest": manifest, "line": line},
    )


def lhotse_cut(item: dict, manifest: str, line: int) -> Cut:
    from lhotse.cut import Cut
    from lhotse.serialization import deserialize_item

    if "id" not in item or "duration" not in item:
        raise ManifestError(manifest, line, f"not a lhotse cut (expected 'id' and 'duration', got keys {sorted(item)})")
    duration = _number(item, "duration", manifest, line, required=True)
    if duration <= 0:
        raise ManifestError(manifest, line, f"invalid duration (expected > 0 seconds, got {duration})")
    try:
        cut = deserialize_item(item)
    except Exception as exc:  # lhotse raises assorted errors on malformed dicts
        raise ManifestError(manifest, line, f"not a valid lhotse cut ({type(exc).__name__}: {exc})") from None
    if not isinstance(cut, Cut):
        raise ManifestError(manifest, line, f"expected a cut, got a {type(cut).__name__}")
    custom = dict(cut.custom or {}) if hasattr(cut, "custom") else {}
    custom.update(manifest=manifest, line=line)
    cut.custom = custom
    return cut


def detect_format(item: dict) -> str | None:
    if any(k in item for k in NEMO_PATH_KEYS):
        return FORMAT_NEMO
    if "id" in item and ("recording" in item or "type" in item):
        return FORMAT_LHOTSE
    return None


def line_duration(item: dict, fmt: str, manifest: str, line: int) -> float:
    """Validate a decoded line and return its duration, without building lhotse objects."""
    if fmt == FORMAT_NEMO:
        return _nemo_fields(item, manifest, line)[2]
    if "id" not in item:
        raise ManifestError(manifest, line, f"not a lhotse cut (expected an 'id', got keys {sorted(item)})")
    duration = _number(item, "duration", manifest, line, required=True)
    if duration <= 0:
        raise ManifestError(manifest, line, f"invalid duration (expected > 0 seconds, got {duration})")
    return duration


def cut_from_item(item: dict, fmt: str, manifest: str, line: int, sampling_rate: int) -> Cut:
    if fmt == FORMAT_NEMO:
        return nemo_cut(nemo_entry(item, manifest, line), manifest, line, sampling_rate)
    return lhotse_cut(item, manifest, line)


# ------------------------------------------------------------------------------------------------
# Whole files and many lines at once


def _open_text(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


@contextmanager
def _reading(path: str):
    """Turn a manifest that cannot be read to its end (not gzip, a damaged gzip, an I/O error) into a
    ManifestError naming it, instead of a traceback from deep inside gzip."""
    try:
        yield
    except (OSError, EOFError, zlib.error) as exc:
        raise unreadable(path, exc) from None


def unreadable(path: str, exc: BaseException) -> ManifestError:
    kind = "gzip " if path.endswith(".gz") else ""
    return ManifestError(
        path,
        0,
        f"cannot be read to its end (expected readable {kind}JSON lines, got {type(exc).__name__}: {exc})",
        "Re-create or re-download the manifest; `nestkit validate-manifest` shows the readable part",
    )


def checked_durations(items: list, fmt: str) -> np.ndarray | None:
    """Durations of decoded lines if every one passes the per-line checks of `fmt`, else None.

    The fast path of indexing: each check is a C-level pass (map, set, join, numpy) over the whole list,
    not a Python call per line. A list that fails goes through `line_duration` line by line, which names
    each bad line exactly.
    """
    if not set(map(type, items)) <= {dict}:
        return None
    raw = list(map(dict.get, items, repeat("duration")))
    if not set(map(type, raw)) <= {int, float}:  # bool and str are refused here, as by line_duration
        return None
    durations = np.asarray(raw, dtype=np.float64)
    if not (np.isfinite(durations).all() and (durations > 0).all()):
        return None
    if fmt == FORMAT_NEMO:
        paths = list(map(dict.get, items, repeat("audio_filepath")))
        # cast: join runs only once the set of types just checked proves every path a str
        if not set(map(type, paths)) <= {str} or not all(paths) or "\0" in "".join(cast("list[str]", paths)):
            return None  # audio_filename lines, empty paths or NUL bytes: the per-line parser decides
        offsets = list(map(dict.get, items, repeat("offset")))
        kinds = set(map(type, offsets))
        if not kinds <= {type(None), int, float}:
            return None
        if kinds - {type(None)}:
            values = np.asarray([o for o in offsets if o is not None], dtype=np.float64)
            if not (np.isfinite(values).all() and (values >= 0).all()):
                return None
    elif not all(map(dict.__contains__, items, repeat("id"))):
        return None
    return durations


def __getattr__(name: str):
    # `CutIndex` lived here before it became a memory-mapped file (nestkit.data.index); importing it
    # from here still works for callers not yet moved (a lazy import: index.py imports this module).
    if name == "CutIndex":
        from nestkit.data.index import CutIndex

        return CutIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
