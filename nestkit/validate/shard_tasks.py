"""Work on shards that runs inside validate-manifest's worker processes (see validate.pool).

Two kinds of task, each bounded by the pool's per-task time limit (a worker stuck on a stalled mount or
an HTTP server that stops answering is killed, the task reported as `timeout`):

* `IndexTask`  -- one shard's member index, always from a walk of the tar itself (a check must not
  trust a saved index), with the tar's own findings; plus the saved index that training would load
  instead (`tar_index.load_or_build`), when it no longer matches the tar;
* `MemberTask` -- one member's bytes (one ranged read) checked like a file: header, every manifest
  segment of it decoded through the loader's sample rules (`validate.audio.check_audio`).

Only numpy, soundfile and orjson are imported here (urllib3 for URLs), like the file checks.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from nestkit.core.errors import AudioLoadError
from nestkit.data.audio import open_audio
from nestkit.data.shards.member_audio import read_error, read_member
from nestkit.data.shards.ranged import RetryPolicy, ShardReadError, is_url, read_whole
from nestkit.data.shards.tar_index import MemberAddress, TarIndex, build_index, index_locations, parse_index
from nestkit.validate.audio import (
    FAULT_ENV,
    CheckSettings,
    FileResult,
    Segment,
    check_audio,
    failed_result,
    injected_fault,
)
from nestkit.validate.categories import hint_of

# How a shard that cannot be read is reported: the file categories where they mean the same.
SHARD_READ_CATEGORY = {
    "missing": "missing",
    "not_regular_file": "not_regular_file",
    "forbidden": "unreadable",
    "io_error": "unreadable",
    "timeout": "timeout",
    "out_of_range": "truncated_shard",
    "unreachable": "unreachable",
    "http_status": "unreachable",
    "short_read": "unreachable",
    "no_range_support": "unreachable",
}


def member_where(shard: str, member: str) -> str:
    """How findings name a member: `shard:member`."""
    return f"{shard}:{member}"


@dataclass(frozen=True)
class IndexOutcome:
    shard: str
    index: TarIndex | None
    category: str | None = None  # why there is no index
    problem: str | None = None
    stale_index: str | None = None  # a saved index training would load, that does not describe the tar


@dataclass(frozen=True)
class IndexTask:
    shard: str
    policy: RetryPolicy
    cache_dir: str | None = None
    unit: ClassVar[str] = "shard"

    def run(self, settings: CheckSettings) -> IndexOutcome:
        if FAULT_ENV in os.environ:
            injected_fault(self.shard)
        try:
            index = build_index(self.shard, self.policy)
        except ShardReadError as err:
            return IndexOutcome(self.shard, None, SHARD_READ_CATEGORY.get(err.category, "unreadable"), str(err))
        return IndexOutcome(self.shard, index, stale_index=self.stale_index(index))

    def stale_index(self, walked: TarIndex) -> str | None:
        """Where the saved index that `load_or_build` would take lies, if it disagrees with the walk.

        A saved index is taken when its shard stat matches; a rewrite that keeps the size and that the
        stat cannot see (a local index published beside a remote shard carries an mtime, the server an
        ETag) slips through, and training would read the wrong bytes.
        """
        for location in index_locations(self.shard, self.cache_dir):
            try:
                if is_url(location):
                    saved = parse_index(read_whole(location, self.policy), self.shard)
                else:
                    saved = parse_index(location, self.shard) if os.path.isfile(location) else None
            except ShardReadError:
                saved = None
            if saved is None or not saved.stat.same_version(walked.stat):
                continue  # load_or_build would look further, or rebuild
            same = saved.names == walked.names and all(
                np.array_equal(getattr(saved, key), getattr(walked, key)) for key in ("data_offsets", "sizes")
            )
            return None if same else location
        return None

    def failed(self, category: str, problem: str) -> IndexOutcome:
        return IndexOutcome(self.shard, None, category, f"shard {self.shard}: {problem}")


@dataclass(frozen=True)
class MemberTask:
    address: MemberAddress
    segments: tuple[Segment, ...]
    policy: RetryPolicy
    unit: ClassVar[str] = "member"

    @property
    def where(self) -> str:
        return member_where(self.address.shard, self.address.name)

    def run(self, settings: CheckSettings) -> FileResult:
        where = self.where
        if FAULT_ENV in os.environ:
            injected_fault(where)
        result = FileResult(where)
        try:
            data = read_member(self.address, self.policy)
        except ShardReadError as err:
            refused = read_error(self.address, err)
            for segment in self.segments:
                hint = hint_of(str(refused), refused.problem) or ""
                result.refused(segment.ref, AudioLoadError(refused.category, where, refused.problem, hint))
            return result
        try:
            sound = open_audio(io.BytesIO(data), where)
        except AudioLoadError as exc:
            for segment in self.segments:
                result.refused(segment.ref, exc)
            return result
        with sound:
            check_audio(sound, lambda: open_audio(io.BytesIO(data), where), where, self.segments, settings, result)
        return result

    def failed(self, category: str, problem: str) -> FileResult:
        return failed_result(self.where, self.segments, category, problem)
