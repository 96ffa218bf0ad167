"""One tar member's bytes -> mono float32 at the target rate, by the very rules of `nestkit.data.audio`.

`read_audio` holds every rule a sample must pass (segment by rounded sample positions, truncation with
its tolerance, channel choice or NeMo's averaging downmix, NaN/Inf, out-of-range and silence checks,
soxr HQ resampling), and it takes a path. Rather than a second copy of those rules for bytes, the bytes
get a path: an anonymous in-memory file (`memfd_create`, Linux) seen as `/proc/self/fd/N`, or a temporary
file elsewhere. Errors are re-raised naming the member's address, not that path.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from nestkit.core.errors import AudioLoadError
from nestkit.data.audio import read_audio
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
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("nestkit-member", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            return _read(f"/proc/self/fd/{fd}", where, target_sr, offset, duration, channel, require_signal)
        finally:
            os.close(fd)
    with tempfile.NamedTemporaryFile(prefix="nestkit-member-") as f:
        f.write(data)
        f.flush()
        return _read(f.name, where, target_sr, offset, duration, channel, require_signal)


def _read(
    path: str,
    where: str,
    target_sr: int,
    offset: float,
    duration: float | None,
    channel: int | None,
    require_signal: bool,
) -> np.ndarray:
    try:
        return read_audio(path, offset, duration, target_sr, channel, require_signal)
    except AudioLoadError as err:
        prefix = f"audio {path}: {err.problem}"
        hint = str(err)[len(prefix) :].lstrip(". ") if str(err).startswith(prefix) else ""
        raise AudioLoadError(err.category, where, err.problem, hint) from None


def read_member(address: MemberAddress, policy: RetryPolicy = DEFAULT_POLICY) -> bytes:
    """The member's bytes: one ranged read."""
    return read_range(address.shard, address.offset, address.size, policy)


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
    (`timeout`, `truncated`, `missing` or `unreadable`) naming the member, so the dataset quarantines it
    like any other bad sample."""
    try:
        data = read_member(address, policy)
    except ShardReadError as err:
        raise AudioLoadError(
            _READ_CATEGORY.get(err.category, "unreadable"),
            str(address),
            f"{err.problem} ({err.category}, {err.attempts} attempt(s))",
            "Check the shard's storage; the index may be stale if the shard was rewritten",
        ) from None
    return decode_member(data, str(address), target_sr, offset, duration, channel, require_signal)
