"""The cut index: one row per usable cut of a corpus, in memory-mapped column files every process shares.

A corpus (per-file manifests, lhotse Shar, a NeMo tarred dataset: `nestkit.data.corpus`) is indexed once
(`index_build`: a streaming pass in bounded chunks) into a folder of raw little-endian columns plus
`meta.json`, and then opened by every rank and DataLoader worker with `np.memmap`: the pages belong to the
page cache and are shared, so eight ranks cost one copy, and nothing is parsed again.

Columns (`index_io.COLUMNS`): duration (float64 seconds, what the planner reads), source (the manifest,
cuts file or tarred manifest), line (1-based), start/length (the line's bytes, in its manifest or in
`lines.bin`), id_hash (for `find`); for shards also shard, member_offset, member_size and ext. Rows are in
source order, lines ascending within a source. A cut is materialised in O(1) by decoding its one line.

Where the folder lives: `<cache dir>/...` when `nestkit.index_cache_dir` is set; else beside the data,
`<manifest folder>/.nestkit-index/`, or for Shar the sibling folder `<shar dir>.nkidx/` (never inside a
Shar directory: lhotse's reader takes every file there as a field); else (URLs, read-only folders) the
user cache (`$NESTKIT_INDEX_CACHE` or ~/.cache/nestkit/shard-index). The folder's name carries a digest of
the corpus's file list, and `meta.json` the version (size + mtime, or ETag) of every manifest and shard:
an index whose files changed is rebuilt, never used.

Concurrent builders (ranks starting together, several jobs on one corpus) take a lock file; without
working locks (some network file systems) each builds into its own temporary folder and renames it into
place, atomically: the loser finds the winner's folder and uses it.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from nestkit.core.errors import ConfigError, ManifestError, ManifestProblems, NestkitError
from nestkit.data.corpus import KIND_SHAR, Corpus, manifest_corpus
from nestkit.data.index_build import build_index
from nestkit.data.index_io import FORMAT_SHAR, FORMAT_TARRED, id_hash
from nestkit.data.index_shards import tarred_cut_id
from nestkit.data.manifest import FORMAT_NEMO, cut_from_item, decode_line, lhotse_cut, nemo_cut_id, nemo_entry
from nestkit.data.shards.ranged import DEFAULT_POLICY, RetryPolicy, ShardReadError, ShardStat, is_url, stat_shard
from nestkit.data.shards.tar_index import MEMBER_KEY, MemberAddress, default_cache_dir

if TYPE_CHECKING:
    from lhotse.cut import Cut

INDEX_FORMAT = "nestkit-cut-index"
INDEX_VERSION = 1
INDEX_SUFFIX = ".cuts"
BESIDE_MANIFEST = ".nestkit-index"  # the folder beside a manifest that holds its indexes
BESIDE_SHAR = ".nkidx"  # the sibling of a Shar directory (as for its tars' member indexes)
LOCK_NOTICE_S = 30.0  # while waiting for another builder, say so this often
WEIGHT_TOLERANCE = 0.01  # relative: shar_path weights this close to the cut counts mean "join them"
SKIP_HINT = (
    "Fix them (`nestkit validate-manifest` explains each), or train without them: "
    "`nestkit train --skip-bad-lines` (nestkit.skip_bad_manifest_lines: true) leaves them out, "
    "counts them and records them in the run folder's quarantine"
)


class CutIndex:
    """The rows of an opened index; columns are read-only arrays (memory maps when not empty)."""

    # the columns (index_io.COLUMNS; the shard ones only for Shar and tarred corpora)
    duration: np.ndarray  # float64 seconds: what the planner reads
    source: np.ndarray  # int32: index into `manifests`
    line: np.ndarray  # int32, 1-based
    start: np.ndarray  # int64: where the line starts in its text (the manifest, or lines.bin)
    length: np.ndarray  # uint32: the line's bytes
    id_hash: np.ndarray  # uint64: hash of a cut id written in the line, 0 when it derives from the line
    shard: np.ndarray  # int32: index into `shards`
    member_offset: np.ndarray  # int64: the member's data in its tar
    member_size: np.ndarray  # int64
    ext: np.ndarray  # uint8: index into `exts` (Shar: the data member is `<cut id>.<ext>`)

    def __init__(self, folder: str, meta: dict, sampling_rate: int = 16000):
        self._attach(folder, meta, sampling_rate)

    def _attach(self, folder: str, meta: dict, sampling_rate: int) -> None:
        self.folder = folder
        self.meta = meta
        self.sampling_rate = sampling_rate
        self.kind: str = meta["kind"]
        self.manifests: list[str] = [s["path"] for s in meta["sources"]]
        self.formats: list[str] = [s["format"] for s in meta["sources"]]
        self.shards: list[str | None] = [s["path"] for s in meta["shards"]]
        self.exts: list[str] = list(meta.get("exts", []))
        self.notices: list[str] = list(meta.get("notices", []))
        self.problem_count: int = int(meta.get("problems", 0))
        rows = int(meta["rows"])
        for name, dtype in meta["columns"].items():
            path = os.path.join(folder, f"{name}.bin")
            column = np.memmap(path, dtype=dtype, mode="r", shape=(rows,)) if rows else np.zeros(0, dtype)
            setattr(self, name, column)
        self._source_rows = np.asarray([s["rows"] for s in meta["sources"]], dtype=np.int64).reshape(-1, 2)
        self._texts: dict[int, bytes | mmap.mmap] = {}
        self._any_explicit_ids = any(f != FORMAT_NEMO for f in self.formats)

    # -- building and opening ---------------------------------------------------------------

    @staticmethod
    def build(
        paths: str | os.PathLike | Sequence[str | os.PathLike], sampling_rate: int = 16000, cache_dir: str | None = None
    ) -> CutIndex:
        """The index of per-file manifests joined in order (built, or reused when fresh). Raises
        ManifestProblems listing every unusable line."""
        return open_index(manifest_corpus(paths), sampling_rate, cache_dir)

    def __getstate__(self) -> dict:
        # spawned workers re-open the files instead of receiving a copy of every column
        return {"folder": self.folder, "meta": self.meta, "sampling_rate": self.sampling_rate}

    def __setstate__(self, state: dict) -> None:
        self._attach(state["folder"], state["meta"], state["sampling_rate"])

    def __len__(self) -> int:
        return len(self.duration)

    @property
    def problems(self) -> list[ManifestError]:
        """Every unusable line that was left out of the index (read from problems.jsonl)."""
        out = []
        path = os.path.join(self.folder, "problems.jsonl")
        with open(path, "rb") as f:
            for raw in f:
                p = orjson.loads(raw)
                out.append(ManifestError(p["manifest"], p["line"], p["problem"], p.get("hint") or ""))
        return out

    @property
    def cache_dir(self) -> str:
        """Where results derived from this index may be cached (the planner keeps its epoch sequences
        here): the index folder itself, so they go when the index is rebuilt."""
        return self.folder

    @property
    def problems_path(self) -> str:
        return os.path.join(self.folder, "problems.jsonl")

    # -- one row ------------------------------------------------------------------------------

    def _text(self, src: int) -> bytes | mmap.mmap:
        """The bytes row offsets of source `src` point into: its manifest, or the index's lines.bin (one
        map shared by every source copied there, e.g. thousands of Shar cuts files)."""
        source = self.meta["sources"][src]
        key = -1 if source["text"] == "blob" else src
        if key not in self._texts:
            path = os.path.join(self.folder, "lines.bin") if key == -1 else source["path"]
            if os.path.getsize(path) == 0:
                self._texts[key] = b""
            else:
                with open(path, "rb") as f:
                    self._texts[key] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._texts[key]

    def text(self, i: int) -> bytes:
        """The bytes of row i's line."""
        start = int(self.start[i])
        return bytes(self._text(int(self.source[i]))[start : start + int(self.length[i])])

    def item(self, i: int) -> dict:
        """The decoded JSON object of row i."""
        src = int(self.source[i])
        return decode_line(self.text(i), self.manifests[src], int(self.line[i]))

    def member(self, i: int) -> MemberAddress | None:
        """Where row i's audio is in its shard (None for a cut read from its own file)."""
        if "shard" not in self.meta["columns"]:
            return None
        src = int(self.source[i])
        shard = self.shards[int(self.shard[i])]
        if shard is None:  # only a Shar part without a tar has none, and none of its rows is kept
            raise self._damaged(i, "its shard has no path (expected the tar its member is in)")
        if self.formats[src] == FORMAT_SHAR:
            name = f"{self.cut_id(i)}.{self.exts[int(self.ext[i])]}"
        else:
            from nestkit.data.shards.nemo_tarred import member_name

            item = self.item(i)
            name = member_name(str(item.get("audio_filepath", item.get("audio_filename"))))
        return MemberAddress(shard, name, int(self.member_offset[i]), int(self.member_size[i]))

    def cut(self, i: int) -> Cut:
        """Row i as a lhotse cut (decodes its one line). A cut from a shard carries its member's address
        in `cut.custom["member"]`; its recording is a Shar-style placeholder only nestkit's loader reads."""
        src, line = int(self.source[i]), int(self.line[i])
        fmt, manifest = self.formats[src], self.manifests[src]
        item = self.item(i)
        if fmt == FORMAT_SHAR:
            cut = lhotse_cut(item, manifest, line)
        elif fmt == FORMAT_TARRED:
            cut = _tarred_cut(item, tarred_cut_id(item, line), manifest, line, self.sampling_rate)
        else:
            return cut_from_item(item, fmt, manifest, line, self.sampling_rate)
        address = self.member(i)
        if address is None:  # an index of Shar or tarred sources always has the shard columns
            raise self._damaged(i, f"no shard columns for a {fmt} source (expected its member's address)")
        cut.custom[MEMBER_KEY] = address.as_dict()
        return cut

    def _damaged(self, i: int, problem: str) -> NestkitError:
        return NestkitError(f"index {self.folder}, row {i}: {problem}. Delete the folder to rebuild the index")

    def cut_id(self, i: int) -> str:
        src, line = int(self.source[i]), int(self.line[i])
        fmt = self.formats[src]
        item = self.item(i)
        if fmt == FORMAT_NEMO:
            return nemo_cut_id(nemo_entry(item, self.manifests[src], line), line)
        if fmt == FORMAT_TARRED:
            return tarred_cut_id(item, line)
        return str(item["id"])

    def where(self, i: int) -> str:
        """`manifest:line` of row i, for messages."""
        return f"{self.manifests[int(self.source[i])]}:{int(self.line[i])}"

    # -- finding rows -------------------------------------------------------------------------

    def _row_in_source(self, src: int, line: int) -> int | None:
        first, end = (int(x) for x in self._source_rows[src])
        at = first + int(np.searchsorted(self.line[first:end], line))
        return at if at < end and int(self.line[at]) == line else None

    def row_at(self, manifest: str, line: int) -> int | None:
        """The row of manifest:line, or None (a blank or unusable line, or not one of these manifests)."""
        for src, path in enumerate(self.manifests):
            if path == manifest:
                row = self._row_in_source(src, line)
                if row is not None:
                    return row
        return None

    def find_all(self, cut_id: str) -> list[int]:
        """Rows of the cuts with this id. An id written in the line is found by its hash (one pass over
        the id_hash column); an id derived from the line (`<stem>-L<line>`) by its line number."""
        rows: set[int] = set()
        if self._any_explicit_ids:
            rows.update(int(r) for r in np.flatnonzero(self.id_hash == id_hash(cut_id)))
        derived = re.search(r"-L(\d+)$", cut_id)
        if derived:
            for src in range(len(self.manifests)):
                row = self._row_in_source(src, int(derived.group(1)))
                if row is not None and int(self.id_hash[row]) == 0:
                    rows.add(row)
        return sorted(r for r in rows if self.cut_id(r) == cut_id)

    def find(self, cut_id: str) -> int | None:
        rows = self.find_all(cut_id)
        return rows[0] if rows else None


def _tarred_cut(item: dict, cut_id: str, manifest: str, line: int, sampling_rate: int) -> Cut:
    """A tarred line as a cut of its member's audio: [offset, offset + duration) of the member."""
    from lhotse import MonoCut, Recording
    from lhotse.audio import AudioSource
    from lhotse.utils import compute_num_samples

    offset = float(item.get("offset") or 0.0)
    duration = float(item["duration"])
    recording = Recording(
        id=cut_id,
        sources=[AudioSource(type="shar", channels=[0], source="")],  # lhotse's placeholder: no file of its own
        sampling_rate=sampling_rate,
        num_samples=compute_num_samples(offset + duration, sampling_rate),
        duration=offset + duration,
    )
    return MonoCut(
        id=cut_id,
        start=offset,
        duration=duration,
        channel=0,
        recording=recording,
        custom={"manifest": manifest, "line": line},
    )


# ------------------------------------------------------------------------------------------------
# Where an index lives


def _label(corpus: Corpus) -> str:
    first = corpus.groups[0].label if corpus.kind == KIND_SHAR and corpus.groups else corpus.manifests[0]
    name = first.rstrip("/").rpartition("/")[2] or "corpus"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60]


def _digest(corpus: Corpus) -> str:
    return hashlib.sha256(orjson.dumps(corpus.identity(), option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _writable_dir(folder: str) -> bool:
    probe = folder
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return False
        probe = parent
    return os.path.isdir(probe) and os.access(probe, os.W_OK)


def index_folder(corpus: Corpus, cache_dir: str | None = None) -> str:
    """The folder that holds (or will hold) the index of `corpus`."""
    name = f"{_label(corpus)}-{_digest(corpus)}{INDEX_SUFFIX}"
    if cache_dir:
        return os.path.join(os.path.abspath(cache_dir), name)
    home = corpus.home
    if home and not is_url(home):
        base = home.rstrip("/") + BESIDE_SHAR if corpus.kind == KIND_SHAR else os.path.join(home, BESIDE_MANIFEST)
        if _writable_dir(base):
            return os.path.join(base, name)
    return os.path.join(default_cache_dir(), "cuts", name)


# ------------------------------------------------------------------------------------------------
# Opening: fresh, or rebuilt


def _read_meta(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, "meta.json"), "rb") as f:
            meta = orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError):
        return None
    if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION:
        return None
    return meta


def _current_stats(paths: list[str], policy: RetryPolicy) -> list[ShardStat | None]:
    def one(path: str) -> ShardStat | None:
        try:
            return stat_shard(path, policy)
        except ShardReadError:
            return None

    remote = sum(1 for p in paths if is_url(p))
    if remote > 1:
        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(one, paths))
    return [one(p) for p in paths]


def stale_reason(meta: dict, corpus: Corpus, policy: RetryPolicy = DEFAULT_POLICY) -> str | None:
    """Why the index described by `meta` cannot be used for `corpus` (None: it is fresh)."""
    if meta.get("identity") != corpus.identity():
        return "it was built for other files"
    entries = [(s["path"], s["stat"]) for s in meta["sources"]] + [
        (s["path"], s["stat"]) for s in meta["shards"] if s["path"] is not None
    ]
    current = _current_stats([p for p, _ in entries], policy)
    for (path, saved), now in zip(entries, current):
        if saved is None:
            continue  # it could not be read when indexed; its lines are among the problems
        if now is None:
            return f"{path} cannot be read any more"
        old = ShardStat.from_dict(saved)
        if not old.same_version(now):
            change = f"size {old.size} -> {now.size}" if old.size != now.size else "modified"
            return f"{path} changed since it was indexed ({change})"
    return None


@contextmanager
def _build_lock(folder: str, notify):
    """An exclusive lock beside the index folder while it is built; a no-op where locks do not work."""
    lock_path = folder + ".lock"
    try:
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        waited, told = time.monotonic(), 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic() - waited
                if now - told >= LOCK_NOTICE_S or not told:
                    notify(f"index {folder}: another process is building it; waiting ({now:.0f} s so far)")
                    told = now or 1e-9
                time.sleep(0.2)
            except OSError:
                break  # no locks here (some network file systems): the atomic rename keeps it safe
        yield
    finally:
        os.close(fd)


def _publish(tmp: str, folder: str) -> None:
    """Move a finished index into place atomically; if another builder got there first, keep theirs."""
    old = None
    if os.path.exists(folder):
        old = f"{folder}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(folder, old)  # processes that opened it keep their maps: unlinked files live on
        except OSError:
            old = None
    try:
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # the winner's index is in place
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build(corpus: Corpus, folder: str, progress: bool | None, policy: RetryPolicy, cache_dir: str | None) -> None:
    tmp = f"{folder}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    try:
        meta = build_index(corpus, tmp, progress, policy, cache_dir)
        meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "identity": corpus.identity(), **meta}
        with open(os.path.join(tmp, "meta.json"), "wb") as f:
            f.write(orjson.dumps(meta))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, folder)


NOT_BUILT = "not built yet"


def _open_fresh(
    folder: str, corpus: Corpus, sampling_rate: int, policy: RetryPolicy
) -> tuple[CutIndex | None, str | None]:
    """(the index, None) when the saved one is fresh and readable, else (None, why not)."""
    meta = _read_meta(folder)
    if meta is None:
        return None, NOT_BUILT
    reason = stale_reason(meta, corpus, policy)
    if reason is not None:
        return None, reason
    try:
        return CutIndex(folder, meta, sampling_rate), None
    except (OSError, ValueError, KeyError) as exc:  # a column file lost or cut short
        return None, f"its files cannot be read ({type(exc).__name__}: {exc})"


def open_index(
    corpus: Corpus,
    sampling_rate: int = 16000,
    cache_dir: str | None = None,
    skip_bad: bool = False,
    progress: bool | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    notify=None,
) -> CutIndex:
    """The index of `corpus`: the saved one when fresh, else built (once, whoever asks first).

    Unusable lines raise ManifestProblems listing them all, unless `skip_bad` (then they are left out,
    and `index.problems` names them). `notify(text)` hears about rebuilds and waits.
    """
    notify = notify or (lambda text: print(text, file=sys.stderr))
    folder = index_folder(corpus, cache_dir)
    index, reason = _open_fresh(folder, corpus, sampling_rate, policy)
    if index is None:
        with _build_lock(folder, notify):
            index, reason = _open_fresh(folder, corpus, sampling_rate, policy)  # built while we waited?
            if index is None:
                if reason != NOT_BUILT:
                    notify(f"index of {corpus.key}: {reason}; rebuilding {folder}")
                _build(corpus, folder, progress, policy, cache_dir)
                meta = _read_meta(folder)
                if meta is None:
                    raise NestkitError(
                        f"index {folder}: its meta.json cannot be read right after building it "
                        f"(expected format {INDEX_FORMAT} version {INDEX_VERSION}). Check the disk and run again"
                    )
                index = CutIndex(folder, meta, sampling_rate)
    meta = index.meta
    index.notices = list(corpus.notices) + index.notices
    if reason is not None and reason != NOT_BUILT:
        index.notices.insert(0, f"index of {corpus.key} rebuilt: {reason}")
    if index.problem_count and not skip_bad:
        kept = [
            ManifestError(p["manifest"], p["line"], p["problem"], p.get("hint") or "") for p in meta["problems_kept"]
        ]
        raise ManifestProblems(kept, index.problem_count, index.problems_path, SKIP_HINT)
    _check_weights(corpus, index)
    return index


def _check_weights(corpus: Corpus, index: CutIndex) -> None:
    """Weights of a shar_path list: honoured when they say what joining does (each cut once per epoch,
    NeMo's default weight = the number of cuts); refused otherwise, never silently ignored."""
    weights = [g.weight for g in corpus.groups if g.weight is not None]
    if not weights:
        return
    if len(weights) != len(corpus.groups):  # corpus.py refuses weights for some directories only
        raise ConfigError([f"{corpus.key}: give a weight for every directory or for none"])
    rows = index._source_rows
    counts = [int((rows[g.first : g.end, 1] - rows[g.first : g.end, 0]).sum()) for g in corpus.groups]
    total_w, total_n = sum(weights), sum(counts)
    share = [(w / total_w, n / total_n if total_n else 0.0) for w, n in zip(weights, counts)]
    if all(abs(w - n) <= WEIGHT_TOLERANCE * max(n, 1e-12) for w, n in share):
        index.notices.append(
            f"{corpus.key}: the weights {[g.weight for g in corpus.groups]} match the directories' cut counts "
            f"{counts}: the directories are joined, each cut once per epoch (NeMo's default weighting)"
        )
        return
    raise ConfigError(
        [
            f"{corpus.key}: weights {[g.weight for g in corpus.groups]} ask for mixing by probability (NeMo's "
            f"CutSet.mux), which nestkit's epoch plan (every cut once per epoch) cannot honour (expected weights "
            f"proportional to the cut counts {counts}, or none). Remove the weights to join the directories, or "
            "list a directory twice to see its cuts twice per epoch"
        ]
    )


def index_columns_bytes(index: CutIndex) -> int:
    """Bytes of the index's column files (the part every process maps)."""
    return sum(os.path.getsize(p) for p in Path(index.folder).glob("*.bin") if p.name != "lines.bin")
