"""Manifests (NeMo JSON-lines or lhotse CutSet JSONL) to lhotse cuts, without opening audio.

Two views of the same lines, built from the same parser:

* `read_cuts(paths)` -- a lazy lhotse `CutSet` for anything that wants lhotse's API;
* `CutIndex.build(paths)` -- a compact columnar index (durations, manifest, line, byte range) that
  the planner uses to plan 1M cuts in seconds and that materialises any cut in O(1) by re-parsing
  its one line.

Every cut remembers where it came from: `cut.custom["manifest"]` and `cut.custom["line"]`
(1-based). A NeMo line becomes a `MonoCut` whose id is `<audio file stem>-L<line>`; relative audio
paths are relative to the manifest's folder. NeMo manifests do not record a sampling rate, so such a
cut's recording carries the nominal target rate: the loader reads the real rate from the file.
A line that cannot be used raises `ManifestError` naming manifest:line, the problem and the fix.
"""

from __future__ import annotations

import gzip
import math
import mmap
import os
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from nestkit.core.errors import ManifestError

if TYPE_CHECKING:
    from lhotse import CutSet, MonoCut
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
# Whole files


def _open_text(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


@contextmanager
def _reading(path: str):
    """Turn a manifest that cannot be read to its end (not gzip, a damaged gzip, an I/O error) into a
    ManifestError naming it, instead of a traceback from deep inside gzip."""
    try:
        yield
    except (OSError, EOFError, zlib.error) as exc:
        kind = "gzip " if path.endswith(".gz") else ""
        raise ManifestError(
            path,
            0,
            f"cannot be read to its end (expected readable {kind}JSON lines, got {type(exc).__name__}: {exc})",
            "Re-create or re-download the manifest; `nestkit validate-manifest` shows the readable part",
        ) from None


def _check_manifest_path(path: str) -> None:
    if not os.path.exists(path):
        raise ManifestError(path, 0, "no such file", "Check the path in the config or on the command line")
    if not os.path.isfile(path):
        raise ManifestError(path, 0, "not a regular file (expected a JSON-lines manifest)")


def file_format(path: str) -> str:
    """The format of a manifest, from its first non-blank line."""
    _check_manifest_path(path)
    with _reading(path), _open_text(path) as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                item = decode_line(raw, path, number)
                fmt = detect_format(item)
                if fmt is None:
                    raise ManifestError(
                        path,
                        number,
                        f"unrecognised manifest format (expected a NeMo line with audio_filepath or a lhotse cut, got keys {sorted(item)})",
                    )
                return fmt
    return FORMAT_NEMO  # an empty file: no cuts either way


class LazyManifestCuts:
    """A lazy, re-iterable source of cuts for `lhotse.CutSet` (no audio is opened)."""

    def __init__(self, paths: Sequence[str], sampling_rate: int):
        self.paths = [os.path.abspath(p) for p in paths]
        self.sampling_rate = sampling_rate
        self._len: int | None = None

    def __iter__(self) -> Iterator[Cut]:
        for path in self.paths:
            fmt = file_format(path)
            with _reading(path), _open_text(path) as f:
                for number, raw in enumerate(f, start=1):
                    if raw.strip():
                        yield cut_from_item(decode_line(raw, path, number), fmt, path, number, self.sampling_rate)

    def __len__(self) -> int:
        if self._len is None:
            total = 0
            for path in self.paths:
                with _reading(path), _open_text(path) as f:
                    total += sum(1 for raw in f if raw.strip())
            self._len = total
        return self._len


def read_cuts(paths: str | Sequence[str], sampling_rate: int = 16000) -> CutSet:
    """A lazy CutSet over one or more NeMo or lhotse manifests, joined in order."""
    from lhotse import CutSet

    if isinstance(paths, (str, os.PathLike)):
        paths = [str(paths)]
    return CutSet(LazyManifestCuts([str(p) for p in paths], sampling_rate))


# ------------------------------------------------------------------------------------------------
# The index


class _ManifestBytes:
    """Random access to a manifest's lines: an mmap for plain files, the inflated bytes for .gz.

    Pickles by path, so that spawned DataLoader workers re-open it instead of copying it.
    """

    def __init__(self, path: str):
        self.path = path
        self._data: bytes | mmap.mmap | None = None

    @property
    def data(self) -> bytes | mmap.mmap:
        if self._data is None:
            if self.path.endswith(".gz"):
                with _reading(self.path), gzip.open(self.path, "rb") as f:
                    self._data = f.read()
            elif os.path.getsize(self.path) == 0:
                self._data = b""
            else:
                with open(self.path, "rb") as f:
                    self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._data

    def __getstate__(self):
        return {"path": self.path, "_data": None}


@dataclass
class CutIndex:
    """Columnar view of joined manifests: one row per non-blank line, in manifest order."""

    manifests: list[str]
    formats: list[str]
    sampling_rate: int
    source: np.ndarray  # int32, index into `manifests`
    line: np.ndarray  # int64, 1-based line number
    start: np.ndarray  # int64, byte offset of the line
    end: np.ndarray  # int64, byte offset just past the line
    duration: np.ndarray  # float64 seconds
    _bytes: list[_ManifestBytes] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.duration)

    @staticmethod
    def build(paths: str | Sequence[str], sampling_rate: int = 16000) -> CutIndex:
        if isinstance(paths, (str, os.PathLike)):
            paths = [str(paths)]
        manifests = [os.path.abspath(str(p)) for p in paths]
        formats, stores = [], []
        columns: list[tuple[np.ndarray, ...]] = []
        for number, path in enumerate(manifests):
            fmt = file_format(path)
            store = _ManifestBytes(path)
            formats.append(fmt)
            stores.append(store)
            columns.append(_scan(store.data, fmt, path, number))
        if columns:
            source, line, start, end, duration = (np.concatenate(c) for c in zip(*columns))
        else:
            source = line = start = end = np.zeros(0, np.int64)
            duration = np.zeros(0, np.float64)
        return CutIndex(manifests, formats, sampling_rate, source.astype(np.int32), line, start, end, duration, stores)

    def item(self, i: int) -> dict:
        """The decoded JSON object of row i."""
        src = int(self.source[i])
        raw = self._bytes[src].data[int(self.start[i]) : int(self.end[i])]
        return decode_line(raw, self.manifests[src], int(self.line[i]))

    def cut(self, i: int) -> Cut:
        """Materialise row i as a lhotse cut (re-parses its one line)."""
        src = int(self.source[i])
        return cut_from_item(
            self.item(i), self.formats[src], self.manifests[src], int(self.line[i]), self.sampling_rate
        )

    def cut_id(self, i: int) -> str:
        src = int(self.source[i])
        item = self.item(i)
        if self.formats[src] == FORMAT_NEMO:
            return nemo_cut_id(nemo_entry(item, self.manifests[src], int(self.line[i])), int(self.line[i]))
        return str(item["id"])

    def cuts(self, rows: Sequence[int] | np.ndarray) -> CutSet:
        from lhotse import CutSet

        return CutSet([self.cut(int(i)) for i in rows])

    def where(self, i: int) -> str:
        """`manifest:line` of row i, for messages."""
        return f"{self.manifests[int(self.source[i])]}:{int(self.line[i])}"

    def find_all(self, cut_id: str) -> list[int]:
        """Rows of the cuts with this id (a scan: for lookups, not for hot paths). NeMo cut ids
        repeat when joined manifests list files of the same name at the same line."""
        return [i for i in range(len(self)) if self.cut_id(i) == cut_id]

    def row_at(self, manifest: str, line: int) -> int | None:
        """The row of manifest:line, or None (a blank line, or not one of these manifests)."""
        if manifest not in self.manifests:
            return None
        source = self.manifests.index(manifest)
        rows = np.flatnonzero((self.source == source) & (self.line == line))
        return int(rows[0]) if len(rows) else None

    def find(self, cut_id: str) -> int | None:
        rows = self.find_all(cut_id)
        return rows[0] if rows else None


_SCAN_CHUNK = 100_000  # lines parsed per orjson call: fast, with bounded transient memory


def _scan(data: bytes | mmap.mmap, fmt: str, path: str, source_number: int) -> tuple[np.ndarray, ...]:
    """Byte ranges, line numbers and durations of every non-blank line of one manifest.

    Lines are parsed in chunks as one JSON array (orjson's C loop); only a chunk that fails a
    check is re-read line by line, to name the first bad line exactly as the per-line parser would.
    """
    blob = bytes(data)
    lines = blob.split(b"\n")
    lengths = np.fromiter((len(x) for x in lines), dtype=np.int64, count=len(lines))
    starts = np.concatenate(([0], np.cumsum(lengths + 1)[:-1]))
    rows = np.fromiter((i for i, x in enumerate(lines) if x.strip()), dtype=np.int64)
    durations = np.empty(len(rows), dtype=np.float64)
    for at in range(0, len(rows), _SCAN_CHUNK):
        chunk = rows[at : at + _SCAN_CHUNK]
        durations[at : at + len(chunk)] = _chunk_durations([lines[i] for i in chunk], chunk, fmt, path)
    return (
        np.full(len(rows), source_number, dtype=np.int32),
        rows + 1,
        starts[rows],
        starts[rows] + lengths[rows],
        durations,
    )


def _chunk_durations(lines: list[bytes], rows: np.ndarray, fmt: str, path: str) -> np.ndarray:
    try:
        items = orjson.loads(b"[" + b",".join(lines) + b"]")
        durations = _checked_durations(items, fmt)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        durations = None
    if durations is not None:
        return durations
    # something in this chunk is wrong: the per-line parser names it (and raises)
    return np.array(
        [line_duration(decode_line(raw, path, int(r) + 1), fmt, path, int(r) + 1) for raw, r in zip(lines, rows)]
    )


def _checked_durations(items: list, fmt: str) -> np.ndarray | None:
    """Durations if every item passes the per-line checks, else None (then the slow path explains)."""
    if not all(type(item) is dict for item in items):
        return None
    raw = [item.get("duration") for item in items]
    if not all(type(d) in (int, float) for d in raw):
        return None
    durations = np.asarray(raw, dtype=np.float64)
    if not (np.isfinite(durations).all() and (durations > 0).all()):
        return None
    if fmt == FORMAT_NEMO:
        for item in items:
            path = item.get("audio_filepath", item.get("audio_filename"))
            offset = item.get("offset")
            if type(path) is not str or not path or "\0" in path:
                return None
            if offset is not None and (type(offset) not in (int, float) or not offset >= 0):
                return None
            if offset is not None and not math.isfinite(offset):
                return None
    elif not all("id" in item for item in items):
        return None
    return durations
