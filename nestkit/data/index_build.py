"""Building a cut index: one streaming pass over a corpus, columns appended to files in bounded chunks.

Manifests are read in chunks of CHUNK_BYTES (whole lines); each chunk's lines are decoded by orjson in
batches as one JSON array (its C loop), and only a batch that fails a check is decoded again line by line,
so that every bad line is named exactly as the per-line parser names it. Memory stays bounded by the chunk,
whatever the corpus size; nothing but the columns grows, and they grow on disk.

Every unusable line is collected (not raised): `problems.jsonl` in the index folder lists them all, the
first PROBLEMS_KEPT are kept in memory for the message. The lines are left out of the index; whether a run
may go on without them is decided when the index is opened.

Text of the lines: a plain local manifest is its own text (the index stores byte ranges into it); the
lines of a gzip or remote manifest, and of every Shar cuts file, are copied (inflated) into `lines.bin`.

Shards: a Shar cuts file and its recording tar are read together (lhotse's pairing: line i <-> member pair
i), several shards at a time in threads. A NeMo tarred dataset first gets every tar's member index
(`tar_index.load_or_build`, in parallel), then its manifests are streamed and each line is given its
member's offset and size.
"""

from __future__ import annotations

import gzip
import os
import sys
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import xxhash

from nestkit.core.errors import ManifestError
from nestkit.data.corpus import KIND_MANIFEST, KIND_SHAR, KIND_TARRED, Corpus
from nestkit.data.manifest import (
    FORMAT_LHOTSE,
    FORMAT_NEMO,
    checked_durations,
    decode_line,
    detect_format,
    line_duration,
    unreadable,
)
from nestkit.data.shards.nemo_tarred import member_name
from nestkit.data.shards.ranged import DEFAULT_POLICY, RetryPolicy, SequentialReader, ShardReadError, is_url, stat_shard
from nestkit.data.shards.tar_index import TarIndex, load_or_build

FORMAT_SHAR = "shar"  # a Shar cuts file: lhotse cut lines whose audio is a member of the paired tar
FORMAT_TARRED = "nemo_tarred"  # a NeMo tarred manifest: NeMo lines whose audio is a member of a tar

CHUNK_BYTES = 16 << 20  # manifest bytes read at a time
PARSE_LINES = 50_000  # lines decoded per orjson call
PROBLEMS_KEPT = 200  # problems kept in memory for the message (all are written to problems.jsonl)
SHARD_WORKERS = 8  # shards read at once (threads: the work is waiting on disks and servers)
TAR_INDEXES_KEPT = 64  # member indexes kept in memory while a tarred manifest is matched

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


class _Columns:
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


class _Problems:
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
class _Build:
    folder: str
    corpus: Corpus
    policy: RetryPolicy
    cache_dir: str | None
    columns: _Columns
    blob: object  # the open lines.bin
    problems: _Problems
    bar: object
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


def build_index(
    corpus: Corpus,
    folder: str,
    progress: bool | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    cache_dir: str | None = None,
) -> dict:
    """Index `corpus` into the (empty) folder `folder`; returns the meta data written to meta.json."""
    started = time.perf_counter()
    names = dict(COLUMNS, **(SHARD_COLUMNS if corpus.sharded else {}))
    with open(os.path.join(folder, "lines.bin"), "wb") as blob, _progress(progress) as bar:
        build = _Build(folder, corpus, policy, cache_dir, _Columns(folder, names), blob, _Problems(folder), bar)
        try:
            if corpus.kind == KIND_MANIFEST:
                for number, path in enumerate(corpus.manifests):
                    _index_manifest(build, number, path)
            elif corpus.kind == KIND_SHAR:
                _index_shar(build)
            elif corpus.kind == KIND_TARRED:
                _index_tarred(build)
            else:
                raise ValueError(f"corpus kind {corpus.kind!r}")
        finally:
            build.columns.close()
            build.problems.close()
    return {
        "kind": corpus.kind,
        "rows": build.columns.rows,
        "columns": names,
        "sources": build.sources,
        "shards": build.shards,
        "exts": build.exts,
        "problems": build.problems.count,
        "problems_kept": [
            {"manifest": p.manifest, "line": p.line, "problem": p.problem, "hint": p.hint} for p in build.problems.kept
        ],
        "notices": build.notices,
        "built_s": round(time.perf_counter() - started, 3),
    }


class _NoBar:
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


def _progress(enabled: bool | None):
    """A rich progress bar on stderr when it is a terminal (or when asked), else nothing."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _NoBar()
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


def _stat(path: str, policy: RetryPolicy) -> dict:
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


def _raw_bytes(path: str, size: int, policy: RetryPolicy) -> Iterator[bytes]:
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


def _gunzip(chunks: Iterator[bytes]) -> Iterator[bytes]:
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


def _whole_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
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


def _text_chunks(path: str, size: int, policy: RetryPolicy, on_raw: Callable[[int], None]) -> Iterator[bytes]:
    def counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            on_raw(len(chunk))
            yield chunk

    raw = counted(_raw_bytes(path, size, policy))
    return _whole_lines(_gunzip(raw) if path.endswith(".gz") else raw)


# ------------------------------------------------------------------------------------------------
# Decoding lines


@dataclass
class _Decoded:
    rows: np.ndarray  # indices into the chunk's lines of the usable ones
    items: list[dict]  # their decoded objects
    durations: np.ndarray


def _decode(lines: list[bytes], fmt: str, path: str, first_line: int, problems: _Problems) -> _Decoded:
    """The usable lines of a chunk; every unusable one goes to `problems` (blank lines are skipped)."""
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    candidates = np.flatnonzero(lengths > 0)
    rows, items, durations = [], [], []
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
            items.extend(decoded)
            durations.append(checked)
            continue
        keep = []
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
            keep.append(i)
            items.append(item)
            durations.append(np.array([duration]))
        rows.append(np.asarray(keep, dtype=np.int64))
    return _Decoded(
        np.concatenate(rows) if rows else np.zeros(0, np.int64),
        items,
        np.concatenate(durations) if durations else np.zeros(0, np.float64),
    )


def _detect(lines: list[bytes]) -> str | None:
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


def _split(chunk: bytes) -> tuple[list[bytes], np.ndarray]:
    """The lines of a chunk (without their newlines) and where each starts in the chunk."""
    lines = chunk.split(b"\n")
    if chunk.endswith(b"\n"):
        lines.pop()
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    starts = np.zeros(len(lines), dtype=np.int64)
    np.cumsum(lengths[:-1] + 1, out=starts[1:])
    return lines, starts


# ------------------------------------------------------------------------------------------------
# Per-file manifests


def _index_manifest(b: _Build, number: int, path: str) -> None:
    stat = _stat(path, b.policy)
    in_blob = is_url(path) or path.endswith(".gz")
    task = b.bar.add_task(f"indexing {os.path.basename(path)}", total=stat["size"])
    first_row, fmt, line_no, pos = b.columns.rows, None, 1, 0
    try:
        for chunk in _text_chunks(path, stat["size"], b.policy, lambda n: b.bar.advance(task, n)):
            base = b.add_text(chunk) if in_blob else pos
            lines, starts = _split(chunk)
            fmt = fmt or _detect(lines)
            decoded = _decode(lines, fmt or FORMAT_NEMO, path, line_no, b.problems)
            ids = (
                [id_hash(str(item.get("id"))) for item in decoded.items]
                if fmt == FORMAT_LHOTSE
                else np.zeros(len(decoded.rows), np.uint64)
            )
            b.columns.append(
                duration=decoded.durations,
                source=np.full(len(decoded.rows), number),
                line=line_no + decoded.rows,
                start=base + starts[decoded.rows],
                length=np.fromiter((len(lines[i]) for i in decoded.rows), np.int64, len(decoded.rows)),
                id_hash=ids,
            )
            line_no += len(lines)
            pos += len(chunk)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        b.problems.add(unreadable(path, exc))  # the lines read before stay usable
    except ShardReadError as err:
        b.problems.add(ManifestError(path, 0, f"cannot be read to its end ({err.problem})", "Check the server"))
    b.sources.append(
        {
            "path": path,
            "format": fmt or FORMAT_NEMO,
            "text": "blob" if in_blob else "file",
            "stat": stat,
            "rows": [first_row, b.columns.rows],
        }
    )


# ------------------------------------------------------------------------------------------------
# lhotse Shar


@dataclass
class _SharPart:
    """One cuts file and its tar, read in a worker thread, written in order by the main thread."""

    cuts_path: str
    tar: str | None
    cuts_stat: dict | None = None
    tar_stat: dict | None = None
    text: bytes = b""
    line: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    length: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    duration: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    ids: list[str] = field(default_factory=list)
    member_offset: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    member_size: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    exts: list[str] = field(default_factory=list)
    problems: list[ManifestError] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    fatal: ManifestError | None = None  # the cuts file itself could not be read


def _read_shar_part(cuts_path: str, tar: str | None, policy: RetryPolicy, cache_dir: str | None) -> _SharPart:
    part = _SharPart(cuts_path, tar)
    try:
        part.cuts_stat = _stat(cuts_path, policy)
        data = b"".join(_text_chunks(cuts_path, part.cuts_stat["size"], policy, lambda n: None))
    except ManifestError as err:
        part.fatal = err
        return part
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ShardReadError) as exc:
        part.fatal = unreadable(cuts_path, exc)
        return part
    part.text = data
    lines, starts = _split(data)
    usable = [(i, raw) for i, raw in enumerate(lines) if raw.strip()]  # lhotse pairs non-blank lines with members
    index: TarIndex | None = None
    why_no_tar = None
    if tar is None:
        why_no_tar = "its shard has no recording tar (expected recording.NNNNNN.tar with the same number)"
    else:
        try:
            index = load_or_build(tar, cache_dir, policy)
            part.tar_stat = index.stat.to_dict()
        except ShardReadError as err:
            why_no_tar = f"its tar cannot be read ({err})"
    pairs = len(index.names) // 2 if index is not None else 0
    if index is not None:
        part.notices += [f.message() for f in index.findings if f.kind != "duplicate_member"]
        if len(index.names) % 2 or pairs != len(usable):
            part.notices.append(
                f"shar {tar}: {len(index.names)} member(s) for {len(usable)} cut line(s) of {cuts_path} "
                "(expected a data and a metadata member per line); lhotse's reader stops at the mismatch"
            )
    keep, durations, ids, offsets, sizes, exts = [], [], [], [], [], []
    for position, (i, raw) in enumerate(usable):
        number = i + 1
        try:
            item = decode_line(raw, cuts_path, number)
            duration = line_duration(item, FORMAT_LHOTSE, cuts_path, number)
            if why_no_tar is not None:
                raise ManifestError(
                    cuts_path, number, f"no audio: {why_no_tar}", f"Check {tar or 'the Shar directory'}"
                )
            address = _shar_member(index, position, str(item["id"]), cuts_path, number)
        except ManifestError as err:
            part.problems.append(err)
            continue
        keep.append(i)
        durations.append(duration)
        ids.append(str(item["id"]))
        offsets.append(address[0])
        sizes.append(address[1])
        exts.append(address[2])
    rows = np.asarray(keep, dtype=np.int64)
    part.line = rows + 1
    part.start = starts[rows] if len(rows) else np.zeros(0, np.int64)
    part.length = np.fromiter((len(lines[i]) for i in keep), np.int64, len(keep))
    part.duration = np.asarray(durations, dtype=np.float64)
    part.ids = ids
    part.member_offset = np.asarray(offsets, dtype=np.int64)
    part.member_size = np.asarray(sizes, dtype=np.int64)
    part.exts = exts
    return part


def _shar_member(index: TarIndex, position: int, cut_id: str, cuts_path: str, number: int) -> tuple[int, int, str]:
    """(offset, size, extension) of the audio member paired with the `position`-th line (lhotse's rule)."""
    if 2 * position + 1 >= len(index.names):
        raise ManifestError(
            cuts_path,
            number,
            f"no member pair {position} in {index.shard} (expected a data and a metadata member for this line, the "
            f"tar has {len(index.names) // 2} pair(s){'; it is cut short' if not index.complete else ''})",
            "Re-create the shard (e.g. `nestkit shard`) or re-copy it",
        )
    data, meta = index.names[2 * position], index.names[2 * position + 1]
    stem, _, ext = data.rpartition(".")
    if stem != cut_id or meta != f"{cut_id}.json":
        raise ManifestError(
            cuts_path,
            number,
            f"member pair {position} of {index.shard} is {data!r}/{meta!r} (expected {cut_id}.<ext> and {cut_id}.json)",
            "lhotse's reader stops here with 'Mismatched IDs'; re-create the shard",
        )
    if ext == "nodata":
        raise ManifestError(cuts_path, number, f"cut {cut_id!r} was stored without audio (a .nodata member)")
    return int(index.data_offsets[2 * position]), int(index.sizes[2 * position]), ext


def _window(items: list, size: int) -> Iterator[list]:
    for at in range(0, len(items), size):
        yield items[at : at + size]


def _index_shar(b: _Build) -> None:
    corpus = b.corpus
    work = list(enumerate(zip(corpus.manifests, corpus.shards)))
    task = b.bar.add_task("indexing Shar shards", total=len(work))
    with ThreadPoolExecutor(max_workers=SHARD_WORKERS) as pool:
        # a window of shards at a time: their parts wait in memory until written in order
        for window in _window(work, 4 * SHARD_WORKERS):
            parts = pool.map(lambda w: _read_shar_part(w[1][0], w[1][1], b.policy, b.cache_dir), window)
            for (number, _), part in zip(window, parts):
                _write_shar_part(b, number, part)
                b.bar.advance(task)


def _write_shar_part(b: _Build, number: int, part: _SharPart) -> None:
    first_row = b.columns.rows
    if part.fatal is not None:
        b.problems.add(part.fatal)
    for err in part.problems:
        b.problems.add(err)
    b.notices.extend(part.notices)
    base = b.add_text(part.text)
    shard_number = len(b.shards)
    b.shards.append({"path": part.tar, "stat": part.tar_stat})
    n = len(part.line)
    b.columns.append(
        duration=part.duration,
        source=np.full(n, number),
        line=part.line,
        start=base + part.start,
        length=part.length,
        id_hash=np.fromiter((id_hash(i) for i in part.ids), np.uint64, n),
        shard=np.full(n, shard_number),
        member_offset=part.member_offset,
        member_size=part.member_size,
        ext=np.fromiter((b.ext_code(e) for e in part.exts), np.uint8, n),
    )
    b.sources.append(
        {
            "path": part.cuts_path,
            "format": FORMAT_SHAR,
            "text": "blob",
            "stat": part.cuts_stat,
            "rows": [first_row, b.columns.rows],
        }
    )


# ------------------------------------------------------------------------------------------------
# NeMo tarred


class _TarIndexes:
    """Member indexes by tar, loaded (or built) on demand, the most recently used kept."""

    def __init__(self, policy: RetryPolicy, cache_dir: str | None):
        self.policy, self.cache_dir = policy, cache_dir
        self.kept: OrderedDict[str, TarIndex] = OrderedDict()
        self.failures: dict[str, ShardReadError] = {}
        self.stats: dict[str, dict] = {}  # tar -> its version when indexed

    def put(self, tar: str, index: TarIndex) -> None:
        self.kept[tar] = index
        self.kept.move_to_end(tar)
        while len(self.kept) > TAR_INDEXES_KEPT:
            self.kept.popitem(last=False)

    def get(self, tar: str) -> TarIndex | None:
        if tar in self.failures:
            return None
        if tar not in self.kept:
            try:
                self.put(tar, load_or_build(tar, self.cache_dir, self.policy))
            except ShardReadError as err:
                self.failures[tar] = err
                return None
        self.kept.move_to_end(tar)
        return self.kept[tar]


def _index_tarred(b: _Build) -> None:
    corpus = b.corpus
    tars = _tar_indexes(b)
    by_id = dict(zip(corpus.shard_ids, corpus.shards))  # the last tar of an id wins, as in NeMo
    shard_number = {tar: i for i, tar in enumerate(corpus.shards)}
    single = len(corpus.manifests) == 1
    for number, (path, file_sid) in enumerate(zip(corpus.manifests, corpus.manifest_shard_ids)):
        stat = _stat(path, b.policy)
        in_blob = is_url(path) or path.endswith(".gz")
        task = b.bar.add_task(f"indexing {os.path.basename(path)}", total=stat["size"])
        first_row, line_no, pos = b.columns.rows, 1, 0
        if not single and file_sid is None:
            b.problems.add(
                ManifestError(
                    path,
                    0,
                    "no shard id in the manifest's name (expected a name like manifest_3.json when each shard has "
                    "its own manifest); its lines cannot be placed",
                    "Rename it, or use one manifest whose lines carry shard_id",
                )
            )
        else:
            try:
                for chunk in _text_chunks(path, stat["size"], b.policy, lambda n, t=task: b.bar.advance(t, n)):
                    base = b.add_text(chunk) if in_blob else pos
                    lines, starts = _split(chunk)
                    decoded = _decode(lines, FORMAT_NEMO, path, line_no, b.problems)
                    matched = _match_lines(b, decoded, path, line_no, file_sid, by_id, tars)
                    keep = np.asarray([i for i, _ in matched], dtype=np.int64)
                    rows = decoded.rows[keep]
                    b.columns.append(
                        duration=decoded.durations[keep],
                        source=np.full(len(rows), number),
                        line=line_no + rows,
                        start=base + starts[rows],
                        length=np.fromiter((len(lines[i]) for i in rows), np.int64, len(rows)),
                        id_hash=np.fromiter((m[0] for _, m in matched), np.uint64, len(rows)),
                        shard=np.fromiter((shard_number[m[1]] for _, m in matched), np.int32, len(rows)),
                        member_offset=np.fromiter((m[2] for _, m in matched), np.int64, len(rows)),
                        member_size=np.fromiter((m[3] for _, m in matched), np.int64, len(rows)),
                        ext=np.zeros(len(rows), np.uint8),
                    )
                    line_no += len(lines)
                    pos += len(chunk)
            except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
                b.problems.add(unreadable(path, exc))
            except ShardReadError as err:
                b.problems.add(ManifestError(path, 0, f"cannot be read to its end ({err.problem})", "Check the server"))
        b.sources.append(
            {
                "path": path,
                "format": FORMAT_TARRED,
                "text": "blob" if in_blob else "file",
                "stat": stat,
                "rows": [first_row, b.columns.rows],
            }
        )
    for tar in corpus.shards:
        st = tars.stats.get(tar)
        b.shards.append({"path": tar, "stat": st})


def _tar_indexes(b: _Build) -> _TarIndexes:
    """Every tar's member index, loaded or built in parallel (and saved), findings turned into notices."""
    tars = _TarIndexes(b.policy, b.cache_dir)
    unique = list(dict.fromkeys(b.corpus.shards))
    task = b.bar.add_task("indexing tar shards", total=len(unique))

    def one(tar: str):
        try:
            return tar, load_or_build(tar, b.cache_dir, b.policy), None
        except ShardReadError as err:
            return tar, None, err

    with ThreadPoolExecutor(max_workers=SHARD_WORKERS) as pool:
        for tar, index, err in pool.map(one, unique):
            b.bar.advance(task)
            if err is not None:
                tars.failures[tar] = err
                b.notices.append(str(err))
                continue
            tars.stats[tar] = index.stat.to_dict()
            tars.put(tar, index)
            b.notices += [f.message() for f in index.findings]
    return tars


def _match_lines(
    b: _Build,
    decoded: _Decoded,
    path: str,
    first_line: int,
    file_sid: int | None,
    by_id: dict[int, str],
    tars: _TarIndexes,
) -> list[tuple[int, tuple]]:
    """(position in `decoded`, (id hash, tar, member offset, size)) of every line whose member is found."""
    out = []
    for k, (row, item) in enumerate(zip(decoded.rows.tolist(), decoded.items)):
        number = first_line + row
        sid = file_sid if file_sid is not None else item.get("shard_id")
        if file_sid is None and (not isinstance(sid, int) or isinstance(sid, bool)):
            b.problems.add(
                ManifestError(
                    path,
                    number,
                    f"no integer shard_id (expected the shard of its tar, got {sid!r})",
                    "A tarred manifest's lines say which tar holds their audio; re-create it with `nestkit shard`",
                )
            )
            continue
        name = member_name(str(item.get("audio_filepath", item.get("audio_filename"))))
        tar = by_id.get(sid)
        if tar is None:
            b.problems.add(
                ManifestError(
                    path,
                    number,
                    f"shard_id {sid} has no tar (expected audio_{sid}.tar among tarred_audio_filepaths)",
                    "Check tarred_audio_filepaths",
                )
            )
            continue
        index = tars.get(tar)
        if index is None:
            b.problems.add(
                ManifestError(path, number, f"member {name!r}: its shard cannot be read ({tars.failures[tar]})")
            )
            continue
        position = index.position(name)
        if position is None:
            cut_short = "" if index.complete else "; the tar is cut short, this member may have been in the lost part"
            b.problems.add(
                ManifestError(
                    path,
                    number,
                    f"member {name!r} is not in shard {sid} ({tar}, {len(index)} members){cut_short}",
                    "NeMo skips such a line silently; fix the manifest or re-create the shard",
                )
            )
            continue
        cut_id = item.get("cut_id")
        hashed = id_hash(cut_id) if isinstance(cut_id, str) and cut_id else 0
        out.append((k, (hashed, tar, int(index.data_offsets[position]), int(index.sizes[position]))))
    return out


def tarred_cut_id(item: dict, line: int) -> str:
    """A tarred line's cut id: its `cut_id` key (what `nestkit shard` writes, the per-file line's id), else
    `<audio_filepath stem>-L<line>` as for per-file NeMo lines."""
    cut_id = item.get("cut_id")
    if isinstance(cut_id, str) and cut_id:
        return cut_id
    return f"{Path(str(item.get('audio_filepath', item.get('audio_filename')))).stem}-L{line}"
