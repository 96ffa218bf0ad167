"""A member index of one tar: member name -> (data offset, size), plus what is wrong with the tar.

Built once by walking the 512-byte headers (Python's `tarfile.TarInfo.frombuf` parses each one: checksum,
base-256 sizes, ustar prefix), with GNU long names (`L`), pax per-member (`x`) and global (`g`) headers
applied by hand: `tarfile`'s own iterator treats a corrupt or cut-off header in mid-file as a clean end of
the archive, and a cut inside member data goes unnoticed until someone reads it. Here every such problem
is a `TarFinding`, the members before it stay usable, and nothing raises.

Locally the walk seeks past member data; over HTTP it streams the shard once (see
`ranged.SequentialReader` for why). The index is saved as a small `.nkidx` file (an uncompressed numpy
`.npz`, layout in `save_index`) together with the shard's size and mtime or ETag: a shard rewritten after
indexing is detected on load and re-indexed.

Where indexes live (`index_locations`): beside a tar (`audio_3.tar.nkidx`), except in a lhotse Shar
directory, where any extra file breaks `CutSet.from_shar(in_dir=...)` (it turns every file name prefix
into a field): there the index goes to a sibling folder `<shar dir>.nkidx/`. With a cache directory
(always for URLs, which cannot be written), `<cache>/<hash of the shard>-<name>.nkidx`. An index
published beside a remote shard is read before the shard is streamed.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import overload

import numpy as np
import orjson

from nestkit.data.shards.ranged import (
    DEFAULT_POLICY,
    RetryPolicy,
    SequentialReader,
    ShardReadError,
    ShardStat,
    is_url,
    read_whole,
    stat_shard,
    watched,
)

INDEX_FORMAT = "nestkit-tar-index"
INDEX_VERSION = 1
INDEX_SUFFIX = ".nkidx"
CACHE_ENV = "NESTKIT_INDEX_CACHE"

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE}
_NO_DATA = {tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE}
_KINDS = {
    tarfile.LNKTYPE: "a hard link",
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.DIRTYPE: "a directory",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.GNUTYPE_SPARSE: "a GNU sparse file",
}
# lhotse's SharWriter names shards `<field>.NNNNNN.tar`
SHAR_TAR_NAME = re.compile(r"^[^./]+\.\d{6}\.tar$")

# Stable names of what a tar walk can find (validation reports and quarantine use them).
TAR_FINDINGS = {
    "truncated": "the tar ends inside a header or inside a member's data: it was cut short",
    "no_end_marker": "the tar ends without its end-of-archive blocks: probably cut short at a member boundary",
    "corrupt_header": "a header with a bad checksum or unreadable fields: nothing after it can be located",
    "duplicate_member": "two members with the same name: readers disagree on which one a name means",
    "not_regular": "a directory, link, device or sparse member: not audio, not indexed",
    "unreadable": "the shard could not be read at all",
}


@dataclass(frozen=True)
class TarFinding:
    kind: str  # one of TAR_FINDINGS
    shard: str
    offset: int  # byte offset of the header concerned (or where the tar ends)
    member: str | None
    detail: str

    def message(self) -> str:
        where = f"shard {self.shard}" + (f" member {self.member!r}" if self.member is not None else "")
        return f"{where} at byte {self.offset}: {self.detail}"

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "shard": self.shard,
            "offset": self.offset,
            "member": self.member,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class MemberAddress:
    """Where one member's bytes are: one ranged read of `size` bytes at `offset` of `shard`."""

    shard: str
    name: str
    offset: int
    size: int

    def __str__(self) -> str:
        return f"{self.shard}[{self.name}]@{self.offset}+{self.size}"

    def as_dict(self) -> dict:
        """The form a cut carries it in (`cut.custom[MEMBER_KEY]`)."""
        return {"shard": self.shard, "name": self.name, "offset": self.offset, "size": self.size}

    @staticmethod
    def from_dict(d: dict) -> MemberAddress:
        return MemberAddress(d["shard"], d["name"], int(d["offset"]), int(d["size"]))


MEMBER_KEY = "member"  # cut.custom[MEMBER_KEY]: the MemberAddress of a cut whose audio is in a shard


@dataclass
class TarIndex:
    shard: str
    stat: ShardStat
    names: list[str]
    header_offsets: np.ndarray  # int64: first header of the member (its pax/GNU header when it has one)
    data_offsets: np.ndarray  # int64
    sizes: np.ndarray  # int64
    findings: list[TarFinding] = field(default_factory=list)
    built_s: float = 0.0  # how long the walk took
    source: str = "built"  # built | loaded | rebuilt (stale) -- how this process got it
    _positions: dict[str, int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    def position(self, name: str) -> int | None:
        """Row of member `name` (its first occurrence, as `tar -x` order would overwrite it: see findings)."""
        if self._positions is None:
            positions: dict[str, int] = {}
            for i, n in enumerate(self.names):
                positions.setdefault(n, i)
            self._positions = positions
        return self._positions.get(name)

    @overload
    def address(self, name_or_row: int) -> MemberAddress: ...
    @overload
    def address(self, name_or_row: str) -> MemberAddress | None: ...
    def address(self, name_or_row: str | int) -> MemberAddress | None:
        """A row's address; a name's, or None when no member has that name."""
        row = self.position(name_or_row) if isinstance(name_or_row, str) else name_or_row
        if row is None:
            return None
        return MemberAddress(self.shard, self.names[row], int(self.data_offsets[row]), int(self.sizes[row]))

    @property
    def complete(self) -> bool:
        """No truncation and no corrupt header: every member the tar holds is in the index."""
        return not any(f.kind in ("truncated", "corrupt_header", "unreadable") for f in self.findings)


# ------------------------------------------------------------------------------------------------
# Walking the headers


def _blocks(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _parse_pax(data: bytes) -> dict[str, str]:
    """Records `"%d %s=%s\\n"` of a pax extended header (POSIX.1-2001)."""
    out, pos = {}, 0
    while pos < len(data) and data[pos : pos + 1] not in (b"\0", b""):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= 0:
            raise ValueError(f"pax record of length {length}")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _walk(reader: SequentialReader, shard: str, size: int) -> tuple[list, list[TarFinding]]:
    members: list[tuple[str, int, int, int]] = []  # name, header offset, data offset, size
    findings: list[TarFinding] = []
    first_seen: dict[str, int] = {}
    pos = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    global_pax: dict[str, str] = {}
    ext_start: int | None = None  # header offset of the extended headers that belong to the next member

    def finding(kind: str, offset: int, member: str | None, detail: str) -> None:
        findings.append(TarFinding(kind, shard, offset, member, detail))

    while True:
        left = size - pos
        if left <= 0:
            finding(
                "no_end_marker",
                size,
                None,
                f"the tar ends after {len(members)} member(s) without its "
                "end-of-archive blocks (expected two zero blocks); it was probably cut at a member "
                "boundary, so members after this point are lost. Re-create or re-copy the shard",
            )
            break
        buf = reader.read(pos, BLOCK)
        if len(buf) < BLOCK:
            finding(
                "truncated",
                pos,
                None,
                f"the tar ends inside a header (expected {BLOCK} bytes, got "
                f"{len(buf)}). Re-create or re-copy the shard",
            )
            break
        if buf == _ZERO_BLOCK:
            break  # end of archive (tarfile stops at the first zero block too)
        try:
            info = tarfile.TarInfo.frombuf(buf, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            finding(
                "corrupt_header",
                pos,
                None,
                f"unreadable header ({exc}); the {len(members)} member(s) "
                "before it are indexed, nothing after it can be located. Re-create the shard",
            )
            break
        data_off = pos + BLOCK
        if info.type in (
            tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK,
            tarfile.XHDTYPE,
            tarfile.SOLARIS_XHDTYPE,
            tarfile.XGLTYPE,
        ):
            if data_off + info.size > size:
                finding(
                    "truncated",
                    pos,
                    None,
                    f"the tar ends inside an extended header (expected "
                    f"{info.size} bytes at {data_off}, the shard has {size}). Re-create or re-copy the shard",
                )
                break
            payload = reader.read(data_off, info.size)
            ext_start = pos if ext_start is None else ext_start
            try:
                if info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                elif info.type == tarfile.XGLTYPE:
                    global_pax.update(_parse_pax(payload))
                elif info.type != tarfile.GNUTYPE_LONGLINK:
                    pax.update(_parse_pax(payload))
            except ValueError as exc:
                finding("corrupt_header", pos, None, f"unreadable pax header ({exc}). Re-create the shard")
                break
            pos = data_off + _blocks(info.size)
            continue
        fields = {**global_pax, **pax}
        name = fields.get("path") or long_name or info.name
        try:
            member_size = int(fields["size"]) if "size" in fields else info.size
        except ValueError:
            finding("corrupt_header", pos, name, f"unreadable pax size {fields['size']!r}. Re-create the shard")
            break
        header_off = ext_start if ext_start is not None else pos
        long_name, pax, ext_start = None, {}, None
        if info.type == tarfile.GNUTYPE_SPARSE:  # old GNU sparse: extension blocks follow the header
            extended = buf[482]
            while extended:
                block = reader.read(data_off, BLOCK)
                if len(block) < BLOCK:
                    break
                extended, data_off = block[504], data_off + BLOCK
        sparse = info.type == tarfile.GNUTYPE_SPARSE or any(k.startswith("GNU.sparse.") for k in fields)
        old_style_dir = info.type == tarfile.AREGTYPE and name.endswith("/")
        regular = info.type in _REGULAR and not sparse and not old_style_dir
        has_data = info.type not in _NO_DATA and not old_style_dir
        if regular:
            if data_off + member_size > size:
                finding(
                    "truncated",
                    header_off,
                    name,
                    f"the tar ends inside this member (expected {member_size} "
                    f"bytes at {data_off}, the shard has {max(0, size - data_off)} of them); the "
                    f"{len(members)} member(s) before it are indexed. Re-create or re-copy the shard",
                )
                break
            if name in first_seen:
                finding(
                    "duplicate_member",
                    header_off,
                    name,
                    f"a second member with this name (the first "
                    f"is at byte {first_seen[name]}); a lookup by name returns the first. Rename or "
                    "remove one",
                )
            else:
                first_seen[name] = header_off
            members.append((name, header_off, data_off, member_size))
        else:
            kind = (
                "a GNU sparse file"
                if sparse
                else "a directory"
                if old_style_dir
                else _KINDS.get(info.type, f"a member of unknown type {info.type!r}")
            )
            finding("not_regular", header_off, name, f"{kind}, not a regular file: not indexed")
        pos = data_off + (_blocks(member_size) if has_data else 0)
    return members, findings


def build_index(shard: str, policy: RetryPolicy = DEFAULT_POLICY) -> TarIndex:
    """Walk the headers of `shard` (a path or an http(s) URL). Read errors raise ShardReadError;
    problems of the tar itself become findings."""
    started = time.perf_counter()
    st = stat_shard(shard, policy)
    with SequentialReader(shard, st.size, policy) as reader:
        members, findings = watched(
            lambda: _walk(reader, shard, st.size), reader.progress, shard, policy.read_timeout_s
        )
    names = [m[0] for m in members]
    columns = np.array([m[1:] for m in members], dtype=np.int64).reshape(-1, 3)
    return TarIndex(
        shard,
        st,
        names,
        columns[:, 0].copy(),
        columns[:, 1].copy(),
        columns[:, 2].copy(),
        findings,
        time.perf_counter() - started,
    )


# ------------------------------------------------------------------------------------------------
# The index file


def save_index(index: TarIndex, path: str) -> None:
    """Write `path` atomically (a reader never sees half a file; concurrent writers: the last one wins).

    Layout: an uncompressed `.npz` with
      meta            uint8, UTF-8 JSON: {"format", "version", "shard", "stat", "findings", "members", "built_s"}
      header_offsets  int64[n]
      data_offsets    int64[n]
      sizes           int64[n]
      names           uint8: the UTF-8 member names back to back (surrogateescape for non-UTF-8 bytes)
      name_ends       int64[n]: end of each name in `names`
    """
    encoded = [n.encode("utf-8", "surrogateescape") for n in index.names]
    meta = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "shard": index.shard,
        "stat": index.stat.to_dict(),
        "findings": [f.to_dict() for f in index.findings],
        "members": len(index),
        "built_s": round(index.built_s, 6),
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".nkidx-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                meta=np.frombuffer(orjson.dumps(meta), dtype=np.uint8),
                header_offsets=index.header_offsets,
                data_offsets=index.data_offsets,
                sizes=index.sizes,
                names=np.frombuffer(b"".join(encoded), dtype=np.uint8),
                name_ends=np.cumsum([len(e) for e in encoded], dtype=np.int64),
            )
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# numpy parses .npy headers with ast.literal_eval, which CPython 3.11 can fail from concurrent threads
# ("SystemError: AST constructor recursion depth mismatch", python/cpython#106905): indexes are read
# by a thread pool, so one header at a time.
_NPY_HEADER_LOCK = threading.Lock()


def parse_index(data: bytes | str, shard: str | None = None) -> TarIndex | None:
    """An index from its file (a path) or its bytes; None when it is not a readable index of this version
    (or of another shard than `shard`): the caller rebuilds it."""
    import io
    import zipfile

    try:
        with _NPY_HEADER_LOCK, np.load(data if isinstance(data, str) else io.BytesIO(data), allow_pickle=False) as z:
            meta = orjson.loads(z["meta"].tobytes())
            if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION:
                return None
            blob, ends = z["names"].tobytes(), z["name_ends"]
            starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
            names = [blob[s:e].decode("utf-8", "surrogateescape") for s, e in zip(starts.tolist(), ends.tolist())]
            index = TarIndex(
                meta["shard"],
                ShardStat.from_dict(meta["stat"]),
                names,
                z["header_offsets"],
                z["data_offsets"],
                z["sizes"],
                [TarFinding(**f) for f in meta["findings"]],
                meta.get("built_s", 0.0),
                "loaded",
            )
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, orjson.JSONDecodeError):
        return None
    if shard is not None and index.shard != shard:
        index.shard = shard  # the same bytes served from elsewhere (a copied dataset, a mirror)
        index.findings = [TarFinding(f.kind, shard, f.offset, f.member, f.detail) for f in index.findings]
    return index


# ------------------------------------------------------------------------------------------------
# Where indexes live


def default_cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "nestkit", "shard-index")


def published_index_path(shard: str) -> str:
    """The index beside the shard (a path, or a URL for a remote shard): `x.tar.nkidx`, or for a Shar
    tar `<dir>.nkidx/<name>.nkidx`, outside the Shar directory (lhotse's reader takes every file in it)."""
    head, _, name = shard.rstrip("/").rpartition("/")
    if SHAR_TAR_NAME.match(name) and head:
        return f"{head}{INDEX_SUFFIX}/{name}{INDEX_SUFFIX}"
    return shard + INDEX_SUFFIX


def cached_index_path(shard: str, cache_dir: str | None = None) -> str:
    key = shard if is_url(shard) else os.path.abspath(shard)
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    name = shard.rstrip("/").rpartition("/")[2]
    return os.path.join(cache_dir or default_cache_dir(), f"{digest}-{name}{INDEX_SUFFIX}")


def index_locations(shard: str, cache_dir: str | None = None) -> list[str]:
    """Where an index of `shard` is looked for, in order. The first writable one is where a build goes.

    Local: beside the shard first (shared by every machine that mounts it). URL: the local cache first
    (no request), then an index published beside the remote shard."""
    if is_url(shard):
        return [cached_index_path(shard, cache_dir), published_index_path(shard)]
    return [published_index_path(shard), cached_index_path(shard, cache_dir)]


def _read_candidate(location: str, shard: str, policy: RetryPolicy) -> TarIndex | None:
    if is_url(location):
        try:
            return parse_index(read_whole(location, policy), shard)
        except ShardReadError:
            return None  # not published (404) or not reachable: the shard itself decides
    if not os.path.isfile(location):
        return None
    return parse_index(location, shard)


def _writable(location: str) -> bool:
    if is_url(location):
        return False
    folder = os.path.dirname(os.path.abspath(location))
    probe = folder
    while not os.path.exists(probe):  # a folder that does not exist yet: its nearest existing parent decides
        probe = os.path.dirname(probe)
    return os.access(probe, os.W_OK)


def load_or_build(
    shard: str, cache_dir: str | None = None, policy: RetryPolicy = DEFAULT_POLICY, save: bool = True
) -> TarIndex:
    """The index of `shard`: a fresh saved one if there is one, else built (and saved where writable).

    Freshness: the saved stat (size + mtime, or ETag/Last-Modified) must match the shard's current one;
    a stale index is rebuilt (`source == "rebuilt"`). Raises ShardReadError if the shard cannot be read.
    """
    current = stat_shard(shard, policy)
    stale = False
    for location in index_locations(shard, cache_dir):
        index = _read_candidate(location, shard, policy)
        if index is None:
            continue
        if index.stat.same_version(current):
            return index
        stale = True
    index = build_index(shard, policy)
    index.source = "rebuilt" if stale else "built"
    if save:
        for location in index_locations(shard, cache_dir):
            if _writable(location):
                try:
                    save_index(index, location)
                    break
                except OSError:
                    continue
    return index


# ------------------------------------------------------------------------------------------------
# Many shards


@dataclass
class IndexBuild:
    """Indexes of a corpus of shards: what was loaded, built or rebuilt, and which shards failed."""

    indexes: dict[str, TarIndex]
    failures: dict[str, ShardReadError]  # shard -> the named error; such a shard is left out, not dropped
    seconds: float

    def count(self, source: str) -> int:
        return sum(1 for i in self.indexes.values() if i.source == source)

    @property
    def members(self) -> int:
        return sum(len(i) for i in self.indexes.values())

    def findings(self) -> list[TarFinding]:
        out = [f for i in self.indexes.values() for f in i.findings]
        out += [TarFinding("unreadable", shard, 0, None, str(err)) for shard, err in self.failures.items()]
        return out


def index_shards(
    shards: Sequence[str] | Iterable[str],
    cache_dir: str | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    workers: int = 8,
    progress: bool = True,
    save: bool = True,
) -> IndexBuild:
    """Load or build the index of every shard, `workers` at a time, with a progress bar.

    Threads, not processes: the work is waiting on disks and servers (pread and sockets release the GIL).
    A shard that cannot be read becomes a recorded failure (its ShardReadError), never an exception.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    shards = list(dict.fromkeys(shards))  # the same shard named twice is indexed once
    started = time.perf_counter()
    indexes: dict[str, TarIndex] = {}
    failures: dict[str, ShardReadError] = {}
    columns = (TextColumn("indexing shards"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with (
        Progress(*columns, disable=not progress, transient=True) as bar,
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
    ):
        task = bar.add_task("index", total=len(shards))
        futures = {pool.submit(load_or_build, s, cache_dir, policy, save): s for s in shards}
        for future in as_completed(futures):
            shard = futures[future]
            try:
                indexes[shard] = future.result()
            except ShardReadError as err:
                failures[shard] = err
            bar.advance(task)
    ordered = {s: indexes[s] for s in shards if s in indexes}
    return IndexBuild(ordered, failures, time.perf_counter() - started)
