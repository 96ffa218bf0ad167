"""One tar member's bytes -> mono float32 at the target rate, by the very rules of `nestkit.data.audio`.

`read_audio_from` decodes an open file object with exactly the rules `read_audio` applies to a path
(segment by rounded sample positions, truncation with its tolerance, channel choice or NeMo's averaging
downmix, NaN/Inf, out-of-range and silence checks, soxr HQ resampling), so the bytes are wrapped in
`io.BytesIO` and errors name the member's address.
"""

from __future__ import annotations

import io

import numpy as np

from nestkit.core.errors import AudioLoadError
from nestkit.data.audio import read_audio_from
from nestkit.data.shards.ranged import DEFAULT_POLICY, RetryPolicy, ShardReadError, read_range
from nestkit.data.shards.tar_index import MemberAddress

_READ_CATEGORY = {"timeout": "timeout", "out_of_range": "truncated", "missing": "missing"}


def decode_member(
    data: bytes,
    where: str,
    target_sr: int = 16000,
    offset: float = 0.0,
    duration: float | None = None,
    channel: int | None = None,
    require_signal: bool = False,
) -> np.ndarray:
    """Samples `[offset, offset + duration)` of the audio file in `data`: mono float32 at `target_sr`.

    `where` names the member in errors (e.g. `str(MemberAddress)`). Raises AudioLoadError with one of
    `nestkit.data.audio.LOAD_FAILURES`, exactly as `read_audio` would for the same file on disk.
    """
    return read_audio_from(io.BytesIO(data), where, offset, duration, target_sr, channel, require_signal)


def read_member(address: MemberAddress, policy: RetryPolicy = DEFAULT_POLICY) -> bytes:
    """The member's bytes: one ranged read."""
    return read_range(address.shard, address.offset, address.size, policy)


def read_error(address: MemberAddress, err: ShardReadError) -> AudioLoadError:
    """A failed member read as the AudioLoadError a bad sample raises (`timeout`, `truncated`, `missing`
    or `unreadable`), naming the member."""
    return AudioLoadError(
        _READ_CATEGORY.get(err.category, "unreadable"),
        str(address),
        f"{err.problem} ({err.category}, {err.attempts} attempt(s))",
        "Check the shard's storage; the index may be stale if the shard was rewritten",
    )


def load_member_audio(
    address: MemberAddress,
    target_sr: int = 16000,
    offset: float = 0.0,
    duration: float | None = None,
    channel: int | None = None,
    require_signal: bool = False,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> np.ndarray:
    """Read one member (one ranged read) and decode it. A read that fails becomes an AudioLoadError
    naming the member, so the dataset quarantines it like any other bad sample."""
    try:
        data = read_member(address, policy)
    except ShardReadError as err:
        raise read_error(address, err) from None
    return decode_member(data, str(address), target_sr, offset, duration, channel, require_signal)
