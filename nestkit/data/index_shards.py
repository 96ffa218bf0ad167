"""Cut-index builders for shards: lhotse Shar (cuts file + recording tar) and NeMo tarred datasets.

Shar: a cuts file and its recording tar are read together, with lhotse's pairing (non-blank line i <->
member pair i, the data member named `<cut id>.<ext>`), several shards at a time in threads, written in
order. NeMo tarred: every tar's member index first (`tar_index.load_or_build`, in parallel, saved), then
the manifests are streamed and each line gets its member's offset and size by NeMo's matching rule
(`nemo_tarred.member_name`). A line whose member cannot be found is a problem naming manifest:line, the
member and the shard; what a tar walk finds (truncation, duplicate names) becomes a notice.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from nestkit.core.errors import ManifestError
from nestkit.data.index_io import (
    CUT_ID_KEY,
    FORMAT_SHAR,
    FORMAT_TARRED,
    READ_ERRORS,
    Build,
    Decoded,
    decode_lines,
    id_hash,
    manifest_stat,
    split_lines,
    text_chunks,
)
from nestkit.data.manifest import FORMAT_LHOTSE, FORMAT_NEMO, decode_line, line_duration, unreadable
from nestkit.data.shards.nemo_tarred import member_name
from nestkit.data.shards.ranged import RetryPolicy, ShardReadError, is_url
from nestkit.data.shards.tar_index import TarIndex, load_or_build

SHARD_WORKERS = 8  # shards read at once (threads: the work is waiting on disks and servers)
TAR_INDEXES_KEPT = 64  # member indexes kept in memory while a tarred manifest is matched


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
        part.cuts_stat = manifest_stat(cuts_path, policy)
        data = b"".join(text_chunks(cuts_path, part.cuts_stat["size"], policy, lambda n: None))
    except ManifestError as err:
        part.fatal = err
        return part
    except READ_ERRORS as exc:
        part.fatal = unreadable(cuts_path, exc)
        return part
    part.text = data
    lines, starts, lengths = split_lines(data)
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
            if why_no_tar is not None or index is None:
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
    part.length = lengths[rows]
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


def index_shar(b: Build) -> None:
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


def _write_shar_part(b: Build, number: int, part: _SharPart) -> None:
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


def index_tarred(b: Build) -> None:
    corpus = b.corpus
    tars = _tar_indexes(b)
    by_id = {sid: str(tar) for sid, tar in zip(corpus.shard_ids, corpus.shards)}  # the last of an id wins, as in NeMo
    shard_number = {tar: i for i, tar in enumerate(corpus.shards)}
    single = len(corpus.manifests) == 1
    for number, (path, file_sid) in enumerate(zip(corpus.manifests, corpus.manifest_shard_ids)):
        stat = manifest_stat(path, b.policy)
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
                for chunk in text_chunks(path, stat["size"], b.policy, partial(b.bar.advance, task)):
                    base = b.add_text(chunk) if in_blob else pos
                    lines, starts, lengths = split_lines(chunk)
                    decoded = decode_lines(lines, lengths, FORMAT_NEMO, path, line_no, b.problems, _tarred_fields)
                    matched = _match_lines(b, decoded, path, line_no, file_sid, by_id, tars)
                    keep = np.asarray([i for i, _ in matched], dtype=np.int64)
                    rows = decoded.rows[keep]
                    b.columns.append(
                        duration=decoded.durations[keep],
                        source=np.full(len(rows), number),
                        line=line_no + rows,
                        start=base + starts[rows],
                        length=lengths[rows],
                        id_hash=np.fromiter((m[0] for _, m in matched), np.uint64, len(rows)),
                        shard=np.fromiter((shard_number[m[1]] for _, m in matched), np.int32, len(rows)),
                        member_offset=np.fromiter((m[2] for _, m in matched), np.int64, len(rows)),
                        member_size=np.fromiter((m[3] for _, m in matched), np.int64, len(rows)),
                        ext=np.zeros(len(rows), np.uint8),
                    )
                    line_no += len(lines)
                    pos += len(chunk)
            except READ_ERRORS as exc:
                b.problems.add(unreadable(path, exc))
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
        st = tars.stats.get(tar) if tar is not None else None  # a tarred corpus names every tar
        b.shards.append({"path": tar, "stat": st})


def _tar_indexes(b: Build) -> _TarIndexes:
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
    b: Build,
    decoded: Decoded,
    path: str,
    first_line: int,
    file_sid: int | None,
    by_id: dict[int, str],
    tars: _TarIndexes,
) -> list[tuple[int, tuple]]:
    """(position in `decoded`, (id hash, tar, member offset, size)) of every line whose member is found."""
    out = []
    for k, (row, (written_sid, audio, cut_id)) in enumerate(zip(decoded.rows.tolist(), decoded.kept)):
        number = first_line + row
        sid = file_sid if file_sid is not None else written_sid
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
        name = member_name(audio)
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
        hashed = id_hash(cut_id) if isinstance(cut_id, str) and cut_id else 0
        out.append((k, (hashed, tar, int(index.data_offsets[position]), int(index.sizes[position]))))
    return out


def _tarred_fields(item: dict) -> tuple:
    """What matching a tarred line to its member needs: (shard_id, audio path, cut_id)."""
    return item.get("shard_id"), str(item.get("audio_filepath", item.get("audio_filename"))), item.get(CUT_ID_KEY)


def tarred_cut_id(item: dict, line: int) -> str:
    """A tarred line's cut id: its `cut_id` key (what `nestkit shard` writes, the per-file line's id), else
    `<audio_filepath stem>-L<line>` as for per-file NeMo lines."""
    cut_id = item.get(CUT_ID_KEY)
    if isinstance(cut_id, str) and cut_id:
        return cut_id
    return f"{Path(str(item.get('audio_filepath', item.get('audio_filename')))).stem}-L{line}"
