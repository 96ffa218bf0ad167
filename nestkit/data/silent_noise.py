"""Noise files proven silent: decoded whole once, never read segment by segment again.

`draw_noise` tries up to `max_segments` random segments of a noise file for a non-silent one. A
silent file (digital silence, dither, a near-silent room tone: real noise collections have them)
costs all of those reads every time it is drawn. This memo lets it skip them -- without changing a
single batch: it answers "every segment would be silent" only when that is a theorem about the
file's samples, so skipping the reads (while still drawing their offsets) gives exactly what
reading them would have given, whether or not this process has met the file before.

The proof, from one bounded, blockwise decode of the whole file (kept as a few numbers, not samples):
* every sample the file holds is finite, the decode yields all the frames its header promises, and
  the cut does not reach past the file's end, so no segment read of the cut can fail (a segment
  ending at the last frame may come one sample short, within the reader's tolerance: bounded too);
* the file is at the target rate, so a segment is exactly a run of those (downmixed) samples;
  then a segment of n samples has mean power <= min(peak power, W-window max power *
  ceil(n / W) * W / n) (n consecutive samples are covered by ceil(n / W) windows of W samples),
  and it is silent when that bound, inflated by the float32 rounding the slow path's energy
  computation may add, is at or below the silence threshold;
* or the file is all zeros at a rate at least the target's (resampling zeros gives zeros).
The file's identity (device, inode, size, mtime, ctime) is recorded with the proof and checked with
one `stat` per use: a file changed since goes back to the slow path.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from nestkit.core import faults
from nestkit.core.timeouts import call_with_timeout
from nestkit.data.audio import check_path
from nestkit.data.loading import file_segment
from nestkit.data.sample_rules import downmix

WINDOW_S = 0.1  # window of the windowed-power bound: short enough that a segment covers many
BLOCK_FRAMES = 1 << 16  # frames decoded at a time: memory stays bounded for any file length
# float32 rounding: one unit roundoff per product, (n - 1) per sum of n terms (any summation
# order), a few more for the float32 downmix; the slow path then compares in float64.
_UNIT_ROUNDOFF = 2.0**-24
_MARGIN = 1e-6


@dataclass(frozen=True)
class SilenceProof:
    identity: tuple[int, ...]  # the file's (dev, ino, size, mtime_ns, ctime_ns) when decoded
    rate: int  # of the file
    zeros: bool  # every sample is 0.0
    peak_power: float  # largest squared sample
    window: int  # W, samples
    window_power: float  # largest mean power over W consecutive samples

    def _power_bound(self, n: int) -> float:
        """An upper bound on the mean power of any n consecutive samples."""
        if n < self.window:
            return self.peak_power
        return min(self.peak_power, self.window_power * math.ceil(n / self.window) * self.window / n)

    def silent_for(self, num_samples: int, target_rate: int, threshold_power: float) -> bool:
        """Every segment of `num_samples` samples at `target_rate` would be judged silent."""
        if num_samples < 2:
            return False  # a one-sample segment at the file's very end may be refused (offset_beyond_end)
        if self.zeros:
            return self.rate >= target_rate
        if self.rate != target_rate:
            return False
        # a segment ending at the file's last frame may come one sample short
        bound = max(self._power_bound(num_samples - 1), self._power_bound(num_samples))
        rounding = num_samples * _UNIT_ROUNDOFF
        if rounding >= 0.5:
            return False
        return bound * (1 + _UNIT_ROUNDOFF) * (1 + rounding / (1 - rounding)) * (1 + _MARGIN) <= threshold_power


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _measure(
    path: str, start_s: float, duration_s: float, channel: int | None, target_rate: int, threshold_power: float
) -> SilenceProof | None:
    """The proof's numbers for one file (None when no proof can hold)."""
    st = check_path(path)
    with sf.SoundFile(path) as f:
        rate, frames, channels = f.samplerate, f.frames, f.channels
        if channel is not None and channel >= channels:
            return None
        if (start_s + duration_s) * rate > frames + 0.5:
            return None  # a segment near the cut's end could start past the file's end or be refused as truncated
        window = max(1, int(round(WINDOW_S * rate)))
        peak, best, seen = 0.0, 0.0, 0
        tail = np.zeros(0)
        for block in f.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
            if channel is not None:
                mono = block[:, channel]
            elif channels > 1:
                mono = downmix(block)  # as the slow path downmixes
            else:
                mono = block[:, 0]
            power = mono.astype(np.float64) ** 2  # exact: a float32 squared fits a float64
            if not np.isfinite(power).all():
                return None
            seen += len(mono)
            peak = max(peak, float(power.max(initial=0.0)))
            joined = np.concatenate((tail, power))
            if len(joined) >= window:
                sums = np.cumsum(joined)
                totals = sums[window - 1 :] - np.concatenate(([0.0], sums[: len(joined) - window]))
                best = max(best, float(totals.max()) / window)
            tail = joined[-(window - 1) :] if window > 1 else joined[:0]
            if peak > 0 and (rate != target_rate or best > threshold_power):
                return None  # resampled, or loud somewhere: no segment length can be proven silent
    if seen != frames:
        return None
    return SilenceProof(_identity(st), rate, peak == 0.0, peak, window, best)


class SilenceMemo:
    """Per process: noise cut -> SilenceProof, or None once a proof has failed for it."""

    def __init__(self) -> None:
        self._proofs: dict[tuple, SilenceProof | None] = {}
        self.reads_skipped = 0  # segment reads draw_noise did not make (for benchmarks and tests)

    def proven(self) -> list[str]:
        """Paths of the noise files with a proof (silent for every segment length, or for long ones)."""
        return sorted(key[0] for key, proof in self._proofs.items() if proof is not None)

    def proves_silent(
        self, cut, num_samples: int, target_rate: int, silence_db: float, timeout_s: float | None, prove: bool
    ) -> bool:
        """True when every `num_samples` segment of `cut` would be silent. Only with `prove`
        (the caller has just read a silent segment of it) is a cut not seen yet decoded whole."""
        if faults.BLOCK_PATH is not None or faults.SLOW_READ_S:
            return False  # debug hooks act on reads: keep every read
        segment = file_segment(cut)
        if segment is None:
            return False
        key = (segment.path, segment.offset, segment.duration, segment.channel)
        threshold_power = 10.0 ** (silence_db / 10.0)
        if key not in self._proofs:
            if not prove:
                return False
            try:
                proof = call_with_timeout(
                    _measure,
                    timeout_s,
                    segment.path,
                    segment.offset,
                    segment.duration,
                    segment.channel,
                    target_rate,
                    threshold_power,
                    what=f"noise {cut.id}",
                )
            except Exception:  # unreadable, damaged, slow: no proof, reads go on as before
                proof = None
            self._proofs[key] = proof
        proof = self._proofs[key]
        if proof is None:
            return False
        try:
            unchanged = _identity(os.stat(segment.path)) == proof.identity
        except OSError:
            unchanged = False
        if not unchanged:
            del self._proofs[key]  # re-proved (or not) from the file as it is now
            return False
        return proof.silent_for(num_samples, target_rate, threshold_power)
