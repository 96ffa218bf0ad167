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


ATTEMPTS_PER_SAMPLE = 3  # tries of one member read inside a sample's time bound


def policy_within(timeout_s: float | None) -> RetryPolicy:
    """A retry policy whose attempts and waits fit in `timeout_s` (a sample's bound; None: the defaults).

    Each attempt gets a third of the time, its waits for a connection or a byte a quarter of that: a
    stalled server is given up and asked again before the sample's own bound trips.
    """
    if not timeout_s:
        return DEFAULT_POLICY
    attempt = timeout_s / (ATTEMPTS_PER_SAMPLE + 0.5)  # the half: room for the backoffs
    return RetryPolicy(
        attempts=ATTEMPTS_PER_SAMPLE,
        connect_timeout_s=min(DEFAULT_POLICY.connect_timeout_s, attempt / 2),
        read_timeout_s=min(DEFAULT_POLICY.read_timeout_s, attempt / 2),
        attempt_deadline_s=min(DEFAULT_POLICY.attempt_deadline_s, attempt),
        backoff_s=min(DEFAULT_POLICY.backoff_s, attempt / 20),
        backoff_max_s=min(DEFAULT_POLICY.backoff_max_s, attempt / 8),
    )


def read_member(address: MemberAddress, policy: RetryPolicy = DEFAULT_POLICY, bounded: bool = True) -> bytes:
    """The member's bytes: one ranged read (`bounded=False`: the caller already bounds local reads)."""
    return read_range(address.shard, address.offset, address.size, policy, bounded=bounded)


def read_error(address: MemberAddress, err: ShardReadError, where: str | None = None) -> AudioLoadError:
    """A failed member read as the AudioLoadError a bad sample raises (`timeout`, `truncated`, `missing`
    or `unreadable`), naming the member (`where`, default its full address) and its bytes."""
    return AudioLoadError(
        _READ_CATEGORY.get(err.category, "unreadable"),
        where or str(address),
        f"{err.problem} ({err.category}, {err.attempts} attempt(s); member at byte {address.offset}, "
        f"{address.size} bytes)",
        "Check the shard's storage; if the shard was rewritten, the next start re-indexes it",
    )


def load_member_audio(
    address: MemberAddress,
    target_sr: int = 16000,
    offset: float = 0.0,
    duration: float | None = None,
    channel: int | None = None,
    require_signal: bool = False,
    policy: RetryPolicy = DEFAULT_POLICY,
    where: str | None = None,
) -> np.ndarray:
    """Read one member (one ranged read) and decode it. A read that fails becomes an AudioLoadError
    (`timeout`, `truncated`, `missing` or `unreadable`) naming the member (`where`, default its full
    address), so the dataset quarantines it like any other bad sample.

    Called from within a bounded call (the loader's per-sample timeout) when `where` is given: local
    reads are then not bounded a second time (a bounded call inside another would wait on itself).
    """
    where = where or str(address)
    try:
        data = read_member(address, policy, bounded=where == str(address))
    except ShardReadError as err:
        raise read_error(address, err, where) from None
    return decode_member(data, where, target_sr, offset, duration, channel, require_signal)
