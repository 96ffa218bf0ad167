"""validate-manifest on shards: lhotse Shar directories and NeMo tarred datasets, local or over HTTP(S).

The shard layer (`nestkit.data.shards`) finds what is wrong with the layout, the tars and the pairing of
lines with members; this module runs it under the validator's rules and speaks its language:

1. the datasets' manifests are read (Shar cuts files, tarred manifests; bounded, retried reads);
2. every tar is indexed in the worker pool (`shard_tasks.IndexTask`), each under --shard-timeout;
3. lines are paired with members (NeMo's rule, or by cut id for Shar next to lhotse's positional check)
   and checked like manifest lines (duration, duplicates, duration limits);
4. every member a line uses is read (one ranged read) and checked like a file (`shard_tasks.MemberTask`),
   each under --timeout, every segment of it decoded through the training loader's sample rules.

Every finding gets a stable category (docs/validate-manifest.md): a member's audio the same ones as a
file's, a shard that cannot be read the same ones as a file that cannot (`missing`, `unreadable`,
`timeout`), plus shard categories for what only shards have. A finding about a line names the manifest
(or cuts file) and line, and `shard:member` as its path; a finding about a tar names the tar.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from nestkit.core.errors import ManifestError
from nestkit.data.manifest import FORMAT_LHOTSE, line_duration, nemo_entry
from nestkit.data.shards.nemo_tarred import NemoFinding, TarredDataset, match_members, read_tarred_dataset
from nestkit.data.shards.ranged import RetryPolicy, ShardReadError
from nestkit.data.shards.shar import (
    SharFinding,
    SharLayout,
    discover_shar,
    match_cuts,
    read_shar_cuts,
    shar_from_fields,
)
from nestkit.data.shards.tar_index import MemberAddress, TarFinding, TarIndex
from nestkit.validate.audio import FileResult, Segment
from nestkit.validate.categories import Finding, default_hint, finding
from nestkit.validate.lines import ManifestSource, Scan, Seen, Use, cross_checks, line_reason, nemo_failure
from nestkit.validate.pool import WorkerPool
from nestkit.validate.shard_tasks import SHARD_READ_CATEGORY, IndexOutcome, IndexTask, MemberTask, member_where

AUDIO_FIELD = "recording"  # the Shar field that holds the audio (lhotse's name)

# library finding kind -> validator category (where the names differ)
_TAR_CATEGORY = {
    "truncated": "truncated_shard",
    "no_end_marker": "unterminated_shard",
    "corrupt_header": "corrupt_shard",
    "duplicate_member": "duplicate_member",
    "not_regular": "not_regular_member",
}
_SHAR_CATEGORY = {"no_cuts": "not_shar", "gap": "shard_gap", "bad_line": "malformed_json"}
_NEMO_CATEGORY = {"bad_line": "malformed_json"}
# library findings whose detail already ends with what to do
_SELF_HINTED = {"truncated", "no_end_marker", "corrupt_header", "duplicate_member", "foreign_file"}


@dataclass(frozen=True)
class SharSource:
    """A lhotse Shar dataset: a local directory, or NeMo's `shar_path: {field: spec}` (paths or URLs)."""

    directory: str | None = None
    fields: dict | None = None
    origin: str = "--shar"  # where it was named, for messages


@dataclass(frozen=True)
class TarredSource:
    """A NeMo tarred dataset: `manifest_filepath` and `tarred_audio_filepaths` as NeMo takes them."""

    manifests: str | list[str]
    tars: str | list[str]
    origin: str = "--tarred-audio"


ShardSource = SharSource | TarredSource


def shard_policy(limit_s: float) -> RetryPolicy:
    """Retries and timeouts that give up, with a named error, within about `limit_s` seconds."""
    return RetryPolicy(
        attempts=3,
        connect_timeout_s=min(10.0, limit_s / 4),
        read_timeout_s=min(30.0, limit_s / 4),
        attempt_deadline_s=max(limit_s / 2, 0.1),
        backoff_s=min(0.5, limit_s / 20),
        backoff_max_s=min(8.0, limit_s / 10),
    )


@dataclass
class ShardCheck:
    findings: list[Finding] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)  # cuts files, tarred manifests and tars, in order
    lines: int = 0
    shards: int = 0
    members: int = 0


@dataclass
class _Pairing:
    """Lines paired with members, waiting for the member checks."""

    refs: list[tuple[str, int]] = field(default_factory=list)  # segment ref -> (manifest, line)
    segments: dict[MemberAddress, list[Segment]] = field(default_factory=dict)

    def use(self, manifest: str, line: int, address: MemberAddress, offset: float, duration, partial: bool) -> None:
        self.refs.append((manifest, line))
        segment = Segment(len(self.refs) - 1, offset, duration, partial, False)
        self.segments.setdefault(address, []).append(segment)


class _Checker:
    def __init__(self, pool: WorkerPool, options, on_progress: Callable | None):
        self.pool, self.options, self.on_progress = pool, options, on_progress
        self.policy = shard_policy(options.shard_timeout_s)
        self.out = ShardCheck()
        self.scan = Scan([])  # line findings of shard manifests, through the per-file line checks
        self.seen = Seen()
        self.pairing = _Pairing()
        self.indexes: dict[str, TarIndex] = {}
        self.failed_tars: dict[str, IndexOutcome] = {}

    # -- findings

    def add(self, manifest: str, line: int, path: str | None, category: str, reason: str) -> None:
        self.register(manifest)
        self.out.findings.append(finding(manifest, line, path, category, reason))

    def register(self, manifest: str) -> None:
        if manifest not in self.out.manifests:
            self.out.manifests.append(manifest)

    def add_library(self, kind: str, category: str, manifest: str, line: int, path: str | None, message: str) -> None:
        reason = message if kind in _SELF_HINTED else f"{message}. {default_hint(category)}"
        self.add(manifest, line, path, category, reason)

    def add_read_failure(self, where: str, err: ShardReadError) -> None:
        self.add(where, 0, where, SHARD_READ_CATEGORY.get(err.category, "unreadable"), str(err))

    # -- the steps

    def run(self, sources: Sequence[ShardSource]) -> ShardCheck:
        prepared = [self.prepare(source) for source in sources]
        tars = list(dict.fromkeys(tar for _kind, _data, tar_list in prepared for tar in tar_list))
        self.index(tars)
        for kind, data, _tars in prepared:
            if kind == "shar":
                self.pair_shar(*data)
            elif kind == "nemo":
                self.pair_nemo(data)
        for f in self.scan.findings:
            self.add(f.manifest, f.line, f.path, f.category, f.reason)
        self.check_members()
        rank = {m: i for i, m in enumerate(self.out.manifests)}
        self.out.findings.sort(key=lambda f: (rank[f.manifest], f.line))
        return self.out

    def prepare(self, source: ShardSource):
        """Read what says which shards there are: ("shar", (layout, lines per shard), tars) or ("nemo", ...)."""
        if isinstance(source, TarredSource):
            return self.prepare_nemo(source)
        layout = discover_shar(source.directory) if source.directory else shar_from_fields(source.fields or {})
        for f in layout.findings:
            self.add_shar(f)
        if layout.shards and not layout.tars(AUDIO_FIELD):
            self.add(
                layout.source,
                0,
                None,
                "field_missing",
                f"shar {layout.source}: no {AUDIO_FIELD} tars (expected {AUDIO_FIELD}.NNNNNN.tar beside every "
                f"cuts file, got the fields {sorted({k for s in layout.shards for k in s.fields})}). "
                f"{default_hint('field_missing')}",
            )
        lines = {}
        for shard in layout.shards:
            self.register(shard.cuts)
            lines[shard.cuts] = self.read_cuts(shard.cuts)
            if AUDIO_FIELD in shard.fields:
                self.register(shard.fields[AUDIO_FIELD])
        return "shar", (layout, lines), layout.tars(AUDIO_FIELD)

    def read_cuts(self, cuts: str) -> list | None:
        try:
            items = read_shar_cuts(cuts, self.policy)
        except ShardReadError as err:
            self.add_read_failure(cuts, err)
            return None
        except (OSError, EOFError, zlib.error) as exc:  # a damaged gzip
            self.add(
                cuts,
                0,
                None,
                "manifest_corrupt",
                f"shar {cuts}: cannot be read (expected gzip JSON lines, got {type(exc).__name__}: {exc}). "
                f"{default_hint('manifest_corrupt')}",
            )
            return None
        self.out.lines += len(items)
        return items

    def prepare_nemo(self, source: TarredSource):
        try:
            dataset = read_tarred_dataset(source.manifests, source.tars, self.policy)
        except ShardReadError as err:
            self.add_read_failure(err.where, err)
            return "failed", None, []
        except (OSError, EOFError, zlib.error) as exc:
            where = source.manifests if isinstance(source.manifests, str) else ", ".join(source.manifests)
            self.add(
                where,
                0,
                None,
                "manifest_corrupt",
                f"manifest {where}: cannot be read (expected JSON lines, got {type(exc).__name__}: {exc}). "
                f"{default_hint('manifest_corrupt')}",
            )
            return "failed", None, []
        for lines in dataset.lines.values():
            for line in lines:
                self.register(line.manifest)
        self.out.lines += sum(len(lines) for lines in dataset.lines.values())
        self.out.lines += sum(1 for f in dataset.findings if f.kind in ("missing_shard_id", "bad_line"))
        for tar in dataset.tars.values():
            self.register(tar)
        return "nemo", dataset, list(dataset.tars.values())

    def index(self, tars: list[str]) -> None:
        tasks = [IndexTask(tar, self.policy) for tar in tars]
        self.progress(0, len(tasks), "indexing shards")
        done = 0

        def on_result(_index: int, outcome: IndexOutcome) -> None:
            nonlocal done
            if outcome.index is not None:
                self.indexes[outcome.shard] = outcome.index
                for f in outcome.index.findings:
                    self.add_tar(f)
                if outcome.stale_index:
                    self.add(
                        outcome.shard,
                        0,
                        outcome.shard,
                        "stale_index",
                        f"shard {outcome.shard}: its saved index {outcome.stale_index} no longer describes it "
                        f"(expected the members a walk of the tar finds, got other names or offsets) but "
                        f"looks current to training. {default_hint('stale_index')}",
                    )
            else:
                self.failed_tars[outcome.shard] = outcome
            done += 1
            self.progress(done, len(tasks), "indexing shards")

        self.pool.run(tasks, on_result, timeout_s=self.options.shard_timeout_s)
        self.out.shards = len(tars)

    def report_failed_tar(self, tar: str, lines: int) -> None:
        """One finding for a shard that could not be indexed, however many lines it holds."""
        outcome = self.failed_tars[tar]
        lost = f"; its {lines} line(s) cannot be checked" if lines else ""
        self.add(tar, 0, tar, outcome.category or "unreadable", f"{outcome.problem}{lost}")

    # -- lhotse Shar

    def pair_shar(self, layout: SharLayout, lines: dict) -> None:
        for shard in layout.shards:
            tar, items = shard.fields.get(AUDIO_FIELD), lines.get(shard.cuts)
            if tar is None or items is None:
                continue
            index = self.indexes.get(tar)
            if index is None:
                self.report_failed_tar(tar, len(items))
                continue
            self.positional_findings(shard, items, index)
            self.pair_shar_by_id(shard.cuts, items, index)

    def positional_findings(self, shard, items: list, index: TarIndex) -> None:
        """lhotse's reader pairs line i with member pair i: what would stop it (the first id mismatch of a
        tar, with the count of the others: after a lost member every later pair is out of step)."""
        _cuts, findings = match_cuts(shard, items, index, AUDIO_FIELD)
        mismatches = [f for f in findings if f.kind == "id_mismatch"]
        for f in findings:
            if f.kind == "no_data" or (f.kind == "id_mismatch" and f is not mismatches[0]):
                continue  # no_data is found by id, below
            if f.kind == "id_mismatch":
                more = len(mismatches) - 1
                detail = f.detail + (f"; {more} later pair(s) of this tar are out of step too" if more else "")
                message = f"manifest {shard.cuts}:{f.line}: in {index.shard}, {detail}"
                self.add_library(f.kind, "id_mismatch", shard.cuts, f.line or 0, index.shard, message)
            elif f.kind == "bad_line":
                message = (
                    f"manifest {shard.cuts}:{f.line}: not a cut (expected a JSON object with a string 'id', "
                    "got something else)"
                )
                self.add_library(f.kind, "malformed_json", shard.cuts, f.line or 0, None, message)
            else:
                self.add_shar(f)

    def pair_shar_by_id(self, cuts: str, items: list, index: TarIndex) -> None:
        tar = index.shard
        data_rows: dict[str, int] = {}
        for position, name in enumerate(index.names):
            stem, dot, extension = name.rpartition(".")
            if dot and extension not in ("json", "nometa"):
                data_rows.setdefault(stem, position)
        ids = set()
        for number, cut in items:
            if cut is None:
                continue  # malformed: reported by the positional check
            ids.add(cut["id"])
            row = data_rows.get(cut["id"])
            if row is None:
                self.add(
                    cuts,
                    number,
                    member_where(tar, f"{cut['id']}.*"),
                    "member_missing",
                    f"manifest {cuts}:{number}: cut {cut['id']!r} has no member in {tar} (expected "
                    f"{cut['id']}.<format> among its {len(index)} members"
                    + ("" if index.complete else ", of a tar that is cut short")
                    + f"). {default_hint('member_missing')}",
                )
                continue
            address = index.address(row)
            assert address is not None  # a row of this index
            if address.name.endswith(".nodata"):
                self.add(
                    cuts,
                    number,
                    member_where(tar, address.name),
                    "no_data",
                    f"manifest {cuts}:{number}: cut {cut['id']!r} is stored without {AUDIO_FIELD} (expected audio, "
                    f"got the placeholder {address.name}). {default_hint('no_data')}",
                )
                continue
            duration = self.shar_duration(cut, cuts, number, member_where(tar, address.name))
            self.pairing.use(cuts, number, address, 0.0, duration, partial=False)
        for stem, row in data_rows.items():
            if stem not in ids:
                name = index.names[row]
                self.add(
                    tar,
                    0,
                    member_where(tar, name),
                    "not_in_manifest",
                    f"shard {tar} member {name!r}: no cut of {cuts} has the id {stem!r} (expected a line for "
                    f"every member). {default_hint('not_in_manifest')}",
                )

    def shar_duration(self, cut: dict, cuts: str, number: int, where: str) -> float | None:
        try:
            duration = line_duration(cut, FORMAT_LHOTSE, cuts, number)
        except ManifestError as exc:
            category = "missing_field" if cut.get("duration") is None else "invalid_duration"
            self.add(cuts, number, where, category, line_reason(exc, category))
            return None
        self.cross_check(cuts, number, duration, Use(cut["id"], where, 0.0, duration))
        return duration

    def cross_check(self, manifest: str, number: int, duration: float, use: Use) -> None:
        options = self.options
        source = ManifestSource(manifest, False)
        cross_checks(
            self.scan, self.seen, source, number, duration, [use], options.min_duration_s, options.max_duration_s
        )

    # -- NeMo tarred

    def pair_nemo(self, dataset: TarredDataset) -> None:
        for sid, tar in dataset.tars.items():
            if tar in self.failed_tars:
                self.report_failed_tar(tar, len(dataset.lines.get(sid, [])))
        match = match_members(dataset, self.indexes)
        for f in match.findings:
            if f.kind == "duplicate_member" or (f.kind == "member_missing" and f.tar in self.failed_tars):
                continue  # the tar's own findings say it once
            index = self.indexes.get(f.tar) if f.tar else None
            if f.kind == "member_missing" and index is not None and not index.complete:
                f = replace(f, detail=f"{f.detail}; the tar is damaged before its end, see its finding")
            self.add_nemo(f)
        by_line = {(line.manifest, line.line): line for lines in dataset.lines.values() for line in lines}
        for cut in match.cuts:
            line = by_line[(cut.manifest, cut.line)]
            where = member_where(cut.member.shard, cut.member.name)
            try:
                entry = nemo_entry(line.item, line.manifest, line.line)
                duration = entry.duration
                self.cross_check(line.manifest, line.line, duration, Use(None, where, entry.offset, duration))
            except ManifestError as exc:
                category, measurable = nemo_failure(line.item, line.manifest, line.line)
                self.add(line.manifest, line.line, where, category, line_reason(exc, category))
                if measurable is None:
                    continue
                duration = None  # only the duration is wrong: measure the member
            partial = line.item.get("offset") is not None
            self.pairing.use(line.manifest, line.line, cut.member, cut.offset, duration, partial)

    # -- members

    def check_members(self) -> None:
        tasks = [
            MemberTask(address, tuple(segments), self.policy) for address, segments in self.pairing.segments.items()
        ]
        if not tasks:
            return
        self.out.members = len(tasks)
        self.progress(0, len(tasks), "checking members")
        refs, done = self.pairing.refs, 0

        def on_result(_index: int, result: FileResult) -> None:
            nonlocal done
            for ref, category, reason in result.findings:
                manifest, line = refs[ref]
                self.add(manifest, line, result.path, category, reason)
            done += 1
            self.progress(done, len(tasks), "checking members")

        self.pool.run(tasks, on_result, timeout_s=self.options.timeout_s)

    # -- library findings

    def add_tar(self, f: TarFinding) -> None:
        category = _TAR_CATEGORY[f.kind]
        path = member_where(f.shard, f.member) if f.member is not None else f.shard
        self.add_library(f.kind, category, f.shard, 0, path, f.message())

    def add_shar(self, f: SharFinding, manifest: str | None = None) -> None:
        category = _SHAR_CATEGORY.get(f.kind, f.kind)
        self.add_library(f.kind, category, manifest or f.where, f.line or 0, None, f.message())

    def add_nemo(self, f: NemoFinding) -> None:
        category = _NEMO_CATEGORY.get(f.kind, f.kind)
        if f.manifest and f.line:
            manifest, line = f.manifest, f.line
        else:
            manifest, line = f.tar or f.manifest or "tarred dataset", 0
        path = member_where(f.tar, f.member) if f.tar and f.member else f.tar
        self.add_library(f.kind, category, manifest, line, path, f.message())

    def progress(self, done: int, total: int, what: str) -> None:
        if self.on_progress:
            self.on_progress(done, total, what)


def check_shards(
    pool: WorkerPool, sources: Sequence[ShardSource], options, on_progress: Callable | None = None
) -> ShardCheck:
    """Check every shard dataset: layout, tars, line-member pairing, and every member's audio."""
    return _Checker(pool, options, on_progress).run(sources)
