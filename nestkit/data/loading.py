"""A cut's samples: mono float32 at the target rate, bounded in time, or an AudioLoadError.

A cut reads a segment of its own file (`file_segment`), a segment of a shard member (`member_segment`: one
ranged read, local or HTTP, retried within the sample's time bound), or whatever lhotse can load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nestkit.core import faults
from nestkit.core.errors import AudioLoadError
from nestkit.core.timeouts import CallTimeout, call_with_timeout
from nestkit.data.audio import check_samples, read_audio, resample
from nestkit.data.shards.member_audio import load_member_audio, policy_within
from nestkit.data.shards.tar_index import MEMBER_KEY, MemberAddress
from nestkit.runfolder import worker_status

if TYPE_CHECKING:  # lhotse (and torch) load lazily: validate-manifest's workers only need file_segment
    from lhotse.cut import Cut


@dataclass(frozen=True)
class FileSegment:
    path: str
    offset: float  # seconds into the file
    duration: float  # seconds
    channel: int | None  # None: average every channel of the file


def file_segment(cut: Cut) -> FileSegment | None:
    """The single file and segment a simple cut reads, or None for anything lhotse must load.

    A MonoCut of a recording declared multi-channel reads its own channel (lhotse's meaning); a
    MultiCut over all channels, or a cut whose recording claims one channel (NeMo manifests do not
    say), averages the file's channels (NeMo's downmix).
    """
    from lhotse.cut import MonoCut, MultiCut

    if not isinstance(cut, (MonoCut, MultiCut)) or cut.recording is None or cut.recording.transforms:
        return None
    sources = cut.recording.sources
    if len(sources) != 1 or sources[0].type != "file" or not isinstance(sources[0].source, str):
        return None
    channel = None
    if isinstance(cut, MonoCut) and cut.recording.num_channels > 1:
        channel = cut.channel
    elif isinstance(cut, MultiCut) and sorted(cut.channel) != sorted(cut.recording.channel_ids):
        return None  # a subset of channels: lhotse loads them, we average
    return FileSegment(sources[0].source, cut.start, cut.duration, channel)


@dataclass(frozen=True)
class MemberSegment:
    """A cut whose audio is a member of a shard: the member's address and the segment of its audio."""

    address: MemberAddress
    offset: float  # seconds into the member's audio
    duration: float  # seconds


def member_segment(cut: Cut) -> MemberSegment | None:
    """The shard member a cut reads (set by the cut index for Shar and NeMo tarred rows), or None."""
    member = (getattr(cut, "custom", None) or {}).get(MEMBER_KEY)
    if not member:
        return None
    return MemberSegment(MemberAddress.from_dict(member), cut.start, cut.duration)


def member_where(address: MemberAddress) -> str:
    """`shard:member`, how messages, quarantine records and stall reports name a cut in a shard."""
    return f"{address.shard}:{address.name}"


def cut_path(cut: Cut) -> str:
    """What a cut reads, for messages: `shard:member`, its file, URL or command (else its recording id)."""
    member = member_segment(cut)
    if member is not None:
        return member_where(member.address)
    segment = file_segment(cut)
    if segment is not None:
        return segment.path
    recording = getattr(cut, "recording", None)
    if recording is None:
        return cut.id
    sources = recording.sources
    if len(sources) == 1 and isinstance(sources[0].source, str) and sources[0].type in ("file", "url", "command"):
        return sources[0].source  # the URL or command a user can try by hand
    return recording.id


def _load(
    cut: Cut, sample_rate: int, offset: float, duration: float | None, require_signal: bool, timeout_s: float | None
) -> np.ndarray:
    if faults.BLOCK_PATH is not None and faults.BLOCK_PATH in cut_path(cut):
        faults.block_forever(cut_path(cut))  # a test hook: see nestkit/core/faults.py
    if faults.SLOW_READ_S:
        faults.slow_read(cut_path(cut), worker_status.loader_rank())
    member = member_segment(cut)
    if member is not None:  # one ranged read of the member, its retries inside this sample's time
        length = duration if duration else member.duration
        return load_member_audio(
            member.address,
            sample_rate,
            member.offset + offset,
            length,
            None,  # NeMo's downmix: a Shar member holds just the cut's channels, a tarred one the whole file
            require_signal,
            policy_within(timeout_s),
            where=member_where(member.address),
        )
    segment = file_segment(cut)
    if segment is not None:
        length = duration if duration else segment.duration
        return read_audio(segment.path, segment.offset + offset, length, sample_rate, segment.channel, require_signal)
    # Anything else (URLs, in-memory audio, mixed cuts): lhotse loads it, we downmix and resample.
    try:
        sub = cut.truncate(offset=offset, duration=duration) if (offset or duration) else cut
        samples = np.asarray(sub.load_audio(), dtype=np.float32)
    except Exception as exc:  # lhotse and its backends raise many exception types
        raise AudioLoadError(
            "decode_error", cut_path(cut), f"lhotse could not load it ({type(exc).__name__}: {exc})"
        ) from None
    if samples.ndim == 2:
        samples = samples.mean(axis=0)
    if samples.size == 0:
        raise AudioLoadError("empty", cut_path(cut), "no samples (expected > 0, got 0)", "Remove the cut")
    if not np.isfinite(samples).all():
        raise AudioLoadError(
            "nan_inf",
            cut_path(cut),
            "samples contain NaN or Inf (expected finite samples, got some)",
            "Re-encode the audio or remove the cut",
        )
    check_samples(samples, cut.sampling_rate, cut_path(cut), require_signal)
    return resample(samples, cut.sampling_rate, sample_rate)


def load_cut(
    cut: Cut,
    sample_rate: int,
    timeout_s: float | None,
    offset: float = 0.0,
    duration: float | None = None,
    require_signal: bool = False,
) -> np.ndarray:
    """Samples of `cut` (or of `[offset, offset+duration)` within it) within `timeout_s` seconds.

    `require_signal`: also refuse an all-zero or constant segment (`all_zero`, `dc_only`), as the
    dataset does for utterances; noise has its own silence rule (`noise_silence_db`).
    """
    if worker_status.active():  # name the read before it starts: a blocked read can be named
        custom = cut.custom or {}
        worker_status.loading(cut.id, cut_path(cut), custom.get("manifest"), custom.get("line"))
    try:
        return call_with_timeout(
            _load, timeout_s, cut, sample_rate, offset, duration, require_signal, timeout_s, what=f"cut {cut.id}"
        )
    except CallTimeout:
        raise AudioLoadError(
            "timeout",
            cut_path(cut),
            f"loading took longer than {timeout_s:g} s",
            "A stalled mount or a pipe? Check the file; raise sample_timeout_s if storage is just slow",
        ) from None
    finally:
        worker_status.loaded()
