"""What every cut-index builder shares: the column files, the problem list, whole-line chunks of a manifest
(local or remote, plain or gzip) and the decoding of lines in batches.

Manifests are read in chunks of CHUNK_BYTES (whole lines); each chunk's lines are decoded by orjson in
batches of PARSE_LINES as one JSON array (its C loop), and only a batch that fails a check is decoded again
line by line, so that every bad line is named exactly as the per-line parser names it. Memory stays
bounded by the chunk, whatever the corpus size; nothing but the columns grows, and they grow on disk.

Every unusable line is collected (not raised): `problems.jsonl` in the index folder lists them all, the
first PROBLEMS_KEPT are kept in memory for the message.
"""

from __future__ import annotations

import gzip
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import orjson
import xxhash

from nestkit.core.errors import ManifestError
from nestkit.data.corpus import Corpus
from nestkit.data.manifest import checked_durations, decode_line, detect_format, line_duration
from nestkit.data.shards.ranged import RetryPolicy, SequentialReader, ShardReadError, is_url, stat_shard

CUT_ID_KEY = "cut_id"  # a tarred line's own cut id (what `nestkit shard` writes: the per-file line's id)
FORMAT_SHAR = "shar"  # a Shar cuts file: lhotse cut lines whose audio is a member of the paired tar
FORMAT_TARRED = "nemo_tarred"  # a NeMo tarred manifest: NeMo lines whose audio is a member of a tar

CHUNK_BYTES = 8 << 20  # manifest bytes read at a time
PARSE_LINES = 20_000  # lines decoded per orjson call
PROBLEMS_KEPT = 200  # problems kept in memory for the message (all are written to problems.jsonl)

# What reading a manifest to its end can raise (a damaged gzip, an I/O error, a server that stopped)
READ_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile, ShardReadError)

# Column name -> dtype, little-endian, one value per row.
COLUMNS = {
    "duration": "<f8",
    "source": "<i4",
    "line": "<i4",
    "start": "<i8",
    "length": "<u4",
    "id_hash": "<u8",
}
SHARD_COLUMNS = {"shard": "<i4", "member_offset": "<i8", "member_size": "<i8", "ext": "<u1"}


def id_hash(cut_id: str) -> int:
    """The id_hash column's value of a cut id (0 is reserved for "the id is derived from the line")."""
    return xxhash.xxh3_64_intdigest(cut_id.encode("utf-8", "surrogatepass")) or 1


# ------------------------------------------------------------------------------------------------
# Output: columns, line text, problems


class Columns:
    def __init__(self, folder: str, names: dict[str, str]):
        self.dtypes = names
        # held open across appends, closed by close() (the builder closes them in a finally)
        self.files = {name: open(os.path.join(folder, f"{name}.bin"), "wb") for name in names}  # noqa: SIM115
        self.rows = 0

    def append(self, **arrays: np.ndarray) -> None:
        n = None
        for name, dtype in self.dtypes.items():
            values = np.asarray(arrays[name], dtype=dtype)
            n = len(values) if n is None else n
            assert len(values) == n, name
            self.files[name].write(values.tobytes())
        self.rows += n or 0

    def close(self) -> None:
        for f in self.files.values():
            f.close()


class Problems:
    def __init__(self, folder: str):
        self.file = open(os.path.join(folder, "problems.jsonl"), "wb")  # noqa: SIM115 (closed by close())
        self.kept: list[ManifestError] = []
        self.count = 0

    def add(self, err: ManifestError) -> None:
        self.count += 1
        if len(self.kept) < PROBLEMS_KEPT:
            self.kept.append(err)
        record = {"manifest": err.manifest, "line": err.line, "problem": err.problem, "hint": err.hint}
        self.file.write(orjson.dumps(record) + b"\n")

    def close(self) -> None:
        self.file.close()


@dataclass
class Build:
    folder: str
    corpus: Corpus
    policy: RetryPolicy
    cache_dir: str | None
    columns: Columns
    blob: BinaryIO  # the open lines.bin
    problems: Problems
    bar: Any  # a rich Progress, or NoBar
    sources: list[dict] = field(default_factory=list)
    shards: list[dict] = field(default_factory=list)
    exts: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    blob_size: int = 0

    def add_text(self, data: bytes) -> int:
        """Copy line text into lines.bin; returns where it starts."""
        at = self.blob_size
        self.blob.write(data)
        self.blob_size += len(data)
        return at

    def ext_code(self, ext: str) -> int:
        if ext not in self.exts:
            self.exts.append(ext)
        return self.exts.index(ext)


class NoBar:
    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        pass

    def advance(self, *args, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_bar(enabled: bool | None):
    """A rich progress bar on stderr when it is a terminal (or when asked), else nothing."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return NoBar()
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


# ------------------------------------------------------------------------------------------------
# Reading a manifest: bytes -> whole-line chunks


def manifest_stat(path: str, policy: RetryPolicy) -> dict:
    """A manifest's version (size + mtime, or ETag); a manifest that is not there stops the build."""
    if not is_url(path):
        if not os.path.exists(path):
            raise ManifestError(path, 0, "no such file", "Check the path in the config or on the command line")
        if not os.path.isfile(path):
            raise ManifestError(path, 0, "not a regular file (expected a JSON-lines manifest)")
    try:
        return stat_shard(path, policy).to_dict()
    except ShardReadError as err:
        raise ManifestError(path, 0, f"cannot be read ({err.problem})", "Check the path and the server") from None


def raw_bytes(path: str, size: int, policy: RetryPolicy) -> Iterator[bytes]:
    if is_url(path):
        with SequentialReader(path, size, policy) as reader:
            for at in range(0, size, CHUNK_BYTES):
                yield reader.read(at, CHUNK_BYTES)
        return
    with open(path, "rb") as f:
        while True:
            data = f.read(CHUNK_BYTES)
            if not data:
                return
            yield data


def gunzip(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Inflate a gzip stream of one or more members (as `gzip.open` reads them), chunk by chunk."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    fed = False  # the current member has started
    for chunk in chunks:
        while chunk:
            fed = True
            out = inflater.decompress(chunk, CHUNK_BYTES)
            chunk = inflater.unconsumed_tail
            if out:
                yield out
            if inflater.eof:
                chunk = inflater.unused_data + chunk
                inflater, fed = zlib.decompressobj(16 + zlib.MAX_WBITS), False
    tail = inflater.flush()
    if tail:
        yield tail
    if fed and not inflater.eof:
        raise EOFError("compressed file ended before the end-of-stream marker was reached")


def whole_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Re-cut a byte stream into chunks that end at a newline (the last one may not)."""
    carry = b""
    for data in chunks:
        data = carry + data if carry else data
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        carry = data[cut + 1 :]
        yield data[: cut + 1]
    if carry:
        yield carry


def text_chunks(path: str, size: int, policy: RetryPolicy, on_raw: Callable[[int], None]) -> Iterator[bytes]:
    def counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            on_raw(len(chunk))
            yield chunk

    raw = counted(raw_bytes(path, size, policy))
    return whole_lines(gunzip(raw) if path.endswith(".gz") else raw)


# ------------------------------------------------------------------------------------------------
# Decoding lines


@dataclass
class Decoded:
    rows: np.ndarray  # indices into the chunk's lines of the usable ones
    kept: list  # what `keep(item)` returned for each of them (None when nothing is kept)
    durations: np.ndarray


def decode_lines(
    lines: list[bytes],
    lengths: np.ndarray,
    fmt: str,
    path: str,
    first_line: int,
    problems: Problems,
    keep: Callable[[dict], object] | None = None,
) -> Decoded:
    """The usable lines of a chunk; every unusable one goes to `problems` (blank lines are skipped).

    Only `keep(item)` of each decoded line outlives its batch of PARSE_LINES lines (the decoded objects
    are most of the memory a build needs).
    """
    candidates = np.flatnonzero(lengths > 0)
    rows: list[np.ndarray] = []
    kept: list = []
    durations: list[np.ndarray] = []
    for at in range(0, len(candidates), PARSE_LINES):
        batch = candidates[at : at + PARSE_LINES]
        texts = [lines[i] for i in batch]
        try:
            decoded = orjson.loads(b"[" + b",".join(texts) + b"]")
            checked = checked_durations(decoded, fmt)
        except orjson.JSONDecodeError:
            checked = None
        if checked is not None:
            rows.append(batch)
            if keep is not None:
                kept.extend(map(keep, decoded))
            durations.append(checked)
            continue
        good = []
        for i, raw in zip(batch.tolist(), texts):
            if not raw.strip():
                continue
            number = first_line + i
            try:
                item = decode_line(raw, path, number)
                duration = line_duration(item, fmt, path, number)
            except ManifestError as err:
                problems.add(err)
                continue
            good.append(i)
            if keep is not None:
                kept.append(keep(item))
            durations.append(np.array([duration]))
        rows.append(np.asarray(good, dtype=np.int64))
    return Decoded(
        np.concatenate(rows) if rows else np.zeros(0, np.int64),
        kept,
        np.concatenate(durations) if durations else np.zeros(0, np.float64),
    )


def detect_lines_format(lines: list[bytes]) -> str | None:
    """The format of a manifest from its first line that is a JSON object of a known format."""
    for raw in lines:
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(item, dict) and (fmt := detect_format(item)) is not None:
            return fmt
    return None


def split_lines(chunk: bytes) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """The lines of a chunk (without their newlines), where each starts in the chunk, and their lengths."""
    lines = chunk.split(b"\n")
    if chunk.endswith(b"\n"):
        lines.pop()
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    starts = np.zeros(len(lines), dtype=np.int64)
    np.cumsum(lengths[:-1] + 1, out=starts[1:])
    return lines, starts, lengths
