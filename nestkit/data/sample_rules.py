"""What a segment of audio must be for training to use it: ONE set of rules, for the loader and the validator.

The training loader (`nestkit.data.audio.read_audio`) applies them to the one segment it reads;
`nestkit validate-manifest` applies them to a long segment block by block as it decodes it, so that
an hour-long file needs no more memory than a short one. Both call the same three steps:

1. `segment_frames`: where the segment lies in the file (sample positions `round(seconds * rate)`), and
   whether the file can hold it (`empty`, `offset_beyond_end`, `truncated` beyond DURATION_TOLERANCE_S);
2. `SegmentStats.add(mono block)`: what the sample rules need, accumulated (count, first non-finite
   sample, extremes, sum of squares) -- the loader adds its one block, the validator each of its blocks;
3. `check_segment`: the verdict, in a fixed order (`truncated` when decoding stopped early, `empty`,
   `nan_inf`, `out_of_range`, then with `require_signal` `all_zero` and `dc_only`).

Every refusal is an `AudioLoadError` whose category is one of LOAD_FAILURES, so a quarantine record from
training and a validator finding about the same segment carry the same word and the same message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nestkit.core.errors import AudioLoadError

# A manifest duration may exceed what the file holds by this much before the segment counts as
# truncated (header rounding, encoder padding). Same default as validate-manifest's tolerance.
DURATION_TOLERANCE_S = 0.1
# Peak-to-peak below this (-80 dBFS, about three steps of 16-bit audio) is a constant signal...
DC_PEAK_TO_PEAK = 1e-4
# ...in a segment at least this long: a handful of samples says nothing about the signal.
DC_MIN_SECONDS = 0.01
# Full scale is 1.0; float files may exceed it (int-scaled floats reach 2^31), but beyond this the
# energies that mixing and the features compute in float32 overflow to Inf and the loss to NaN.
MAX_ABS_SAMPLE = 1e10

# Stable names for why a load failed; quarantine records and validate-manifest use them.
LOAD_FAILURES = {
    "missing": "the file does not exist",
    "broken_symlink": "a symbolic link whose target does not exist",
    "symlink_loop": "a symbolic link that points back to itself",
    "not_regular_file": "a directory, FIFO, socket or device, never opened",
    "unreadable": "no permission to read, or an I/O error on open",
    "not_audio": "libsndfile cannot parse it as audio (not audio, or a corrupt header)",
    "empty": "the file or the requested segment has no samples",
    "offset_beyond_end": "the manifest offset lies past the end of the file",
    "truncated": "the file holds less audio than the manifest segment needs",
    "decode_error": "decoding failed part-way through the file",
    "nan_inf": "the decoded samples contain NaN or Inf",
    "out_of_range": "float samples far beyond full scale (|x| > 1e10): their energy overflows float32",
    "all_zero": "every sample of the segment is zero",
    "dc_only": "the segment is a constant (peak-to-peak below -80 dBFS) but not zero",
    "timeout": "loading took longer than the per-sample limit",
}

_FIX_DURATIONS = "Re-measure durations with `nestkit validate-manifest --fix-durations OUT`"
_REENCODE = "Re-encode the file or drop the line with `nestkit validate-manifest --write-clean OUT`"
_USELESS = "Remove the line: there is nothing to learn from"


def tolerance_frames(rate: int) -> int:
    return int(DURATION_TOLERANCE_S * rate)


def segment_frames(where: str, offset: float, duration: float | None, rate: int, frames: int) -> tuple[int, int]:
    """(first frame, frames to decode) of `[offset, offset + duration)` in audio of `frames` frames.

    `duration=None` means to the end. A segment may overshoot the audio by DURATION_TOLERANCE_S (it is
    then cut to what there is); beyond that it is `truncated`.
    """
    if frames <= 0:
        raise AudioLoadError(
            "empty", where, "the file has no samples (expected > 0, got 0)", "Remove the line or the file"
        )
    start = int(round(offset * rate))
    if start >= frames:
        raise AudioLoadError(
            "offset_beyond_end",
            where,
            f"offset is past the end of the file (expected < {frames / rate:.3f} s, got {offset:.3f} s)",
            "Fix the offset in the manifest",
        )
    wanted = frames - start if duration is None else int(round(duration * rate))
    if start + wanted > frames + tolerance_frames(rate):
        raise AudioLoadError(
            "truncated",
            where,
            f"the manifest segment needs more audio than the file holds "
            f"(expected offset + duration <= {(frames + tolerance_frames(rate)) / rate:.3f} s, "
            f"got {(start + wanted) / rate:.3f} s)",
            _FIX_DURATIONS,
        )
    return start, min(wanted, frames - start)


def check_channel(where: str, channel: int | None, channels: int) -> None:
    """A cut that names a channel the audio lacks (a mono file too) cannot be read."""
    if channel is not None and channel >= channels:
        raise AudioLoadError(
            "not_audio",
            where,
            f"the cut reads a channel the file does not have (expected channel < {channels}, got {channel})",
            "Fix the cut's channel or the recording",
        )


def to_mono(block: np.ndarray, channel: int | None) -> np.ndarray:
    """The signal training sees: the channel the cut names, or NeMo's average of all channels."""
    if block.ndim == 1:
        return block
    return block[:, channel] if channel is not None else downmix(block)


def downmix(frames: np.ndarray) -> np.ndarray:
    """The average of the channels of (frames, channels) float32 audio, bit for bit what
    `frames.mean(axis=1, dtype=np.float32)` gives, ~40x faster: numpy reduces each frame's few
    channels in a slow inner loop. From 8 channels on numpy sums pairwise: then numpy it is."""
    channels = frames.shape[1]
    if channels >= 8:
        return frames.mean(axis=1, dtype=np.float32)
    total = np.zeros(len(frames), np.float32)  # from +0.0, as numpy's sum: -0.0 channels give +0.0
    for k in range(channels):
        total += frames[:, k]
    total /= np.float32(channels)
    return total


def decode_error(where: str, start: int, wanted: int, decoded: int, rate: int, exc: Exception) -> AudioLoadError:
    return AudioLoadError(
        "decode_error",
        where,
        f"decoding failed (expected {wanted / rate:.3f} s of samples from {start / rate:.3f} s, "
        f"got an error after {decoded / rate:.3f} s: {exc})",
        _REENCODE,
    )


@dataclass(slots=True)
class SegmentStats:
    """What the sample rules need of a segment, accumulated block by block (mono blocks).

    Three passes per block (sum of squares, max, min): the sum of squares is non-finite exactly when a
    sample is NaN or Inf, or when finite samples are so large that their squares overflow -- only then
    is the block searched for the first non-finite sample. After one, only the count goes on, so that
    a segment that also stops early is `truncated` for the validator as for the loader.
    """

    frames: int = 0
    first_non_finite: int | None = None  # frame index within the segment
    high: float = -math.inf
    low: float = math.inf
    squares: float = 0.0

    def add(self, mono: np.ndarray) -> None:
        if self.first_non_finite is None and len(mono):
            with np.errstate(over="ignore"):  # huge float samples: out_of_range, judged in check_segment
                squares = float(np.dot(mono, mono))
            bad = np.flatnonzero(~np.isfinite(mono)) if not math.isfinite(squares) else np.empty(0, np.intp)
            if len(bad):
                self.first_non_finite = self.frames + int(bad[0])
            else:
                self.squares += squares
                self.high = max(self.high, float(mono.max()))
                self.low = min(self.low, float(mono.min()))
        self.frames += len(mono)

    @property
    def peak(self) -> float:
        return max(self.high, -self.low)

    def rms_db(self) -> float:
        """RMS level in dBFS (-inf for silence); meaningful for finite segments only."""
        rms = math.sqrt(max(self.squares, 0.0) / self.frames) if self.frames else 0.0
        return 20 * math.log10(rms) if rms > 0 else -math.inf


def check_segment(stats: SegmentStats, where: str, start: int, wanted: int, rate: int, require_signal: bool) -> None:
    """Refuse a decoded segment training cannot use (`wanted` frames were asked from frame `start`)."""
    if stats.frames < wanted - tolerance_frames(rate):
        raise AudioLoadError(
            "truncated",
            where,
            f"decoding stopped early (expected {wanted / rate:.3f} s as the header promises, "
            f"got {stats.frames / rate:.3f} s)",
            "The file is cut short or damaged: re-encode or remove it",
        )
    if stats.frames == 0:
        raise AudioLoadError("empty", where, "the segment has no samples (expected > 0, got 0)", "Remove the line")
    if stats.first_non_finite is not None:
        raise AudioLoadError(
            "nan_inf",
            where,
            f"samples contain NaN or Inf (expected finite samples, "
            f"got the first at {(start + stats.first_non_finite) / rate:.3f} s)",
            _REENCODE,
        )
    check_values(stats, where, rate, require_signal)


def check_values(stats: SegmentStats, where: str, rate: int, require_signal: bool) -> None:
    """Refuse finite samples training cannot use: beyond MAX_ABS_SAMPLE (`out_of_range`) and, with
    `require_signal` (utterances; noise has its own silence rule), a segment with nothing to learn
    from: all zeros (`all_zero`) or a constant (`dc_only`)."""
    if stats.peak > MAX_ABS_SAMPLE:
        raise AudioLoadError(
            "out_of_range",
            where,
            f"float samples so far beyond full scale that their energy overflows float32 "
            f"(expected |x| <= {MAX_ABS_SAMPLE:g}, got {stats.peak:.3g})",
            "Re-encode the file with samples scaled to [-1, 1], "
            "or drop the line with `nestkit validate-manifest --write-clean OUT`",
        )
    if not require_signal:
        return
    if stats.high == 0.0 and stats.low == 0.0:
        raise AudioLoadError(
            "all_zero", where, f"every sample is zero (expected sound, got {stats.frames} zeros)", _USELESS
        )
    if stats.high - stats.low < DC_PEAK_TO_PEAK and stats.frames >= DC_MIN_SECONDS * rate:
        raise AudioLoadError(
            "dc_only",
            where,
            f"the signal is a constant {(stats.high + stats.low) / 2:+.6f} "
            f"(expected peak-to-peak >= {DC_PEAK_TO_PEAK:g}, got {stats.high - stats.low:.2g})",
            _USELESS,
        )
