"""Check one audio file against the manifest segments that use it. Runs inside worker processes.

The path and the header go through the loader's own `check_path` and opener, and the segment
arithmetic is the loader's (`read_audio`: sample positions are `round(seconds * rate)`, a segment
may overshoot the file by `DURATION_TOLERANCE_S`), so a segment that training would refuse is an
error here with the same category. On top of that come the checks a loader cannot afford on every
read: wrong extension, resampling/downmixing, clipping, constant or silent audio.

The file is opened once for all its segments and each segment is decoded once, in blocks of about a
minute so a ten-hour file needs no more memory than a short one. Nothing here blocks forever by
itself (a FIFO is refused by `stat`), but a stalled mount can block any syscall, so the parent
process bounds each file with a timeout and kills the worker (see validate_pool).
"""

from __future__ import annotations

import math
import os
import re
import signal
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from nestkit.core.errors import AudioLoadError
from nestkit.data.audio import (
    DC_MIN_SECONDS,
    DC_PEAK_TO_PEAK,
    DURATION_TOLERANCE_S,
    MAX_ABS_SAMPLE,
    check_path,
    seek_frame,
)
from nestkit.data.audio import _open as open_audio
from nestkit.validate.categories import default_hint, expected_form, hint_of

# Frames decoded per read: bounds memory on very long files (1 MiB per channel as float32) and
# locates a decoding failure to within 16 s at 16 kHz.
DECODE_BLOCK_FRAMES = 1 << 18

# Test hook, "<action>:<resolved audio path>": when a worker reaches that path it
#   stall -- blocks in a read(2) that never returns, as on a stalled network mount (-> `timeout`);
#   crash -- dies of SIGSEGV, as in a decoder crash (-> `worker_crash`);
#   raise -- raises an unexpected exception, as a bug of ours would (-> `internal_error`).
# The tests use it to prove that the parent reports the file and carries on with the others.
FAULT_ENV = "NESTKIT_VALIDATE_TEST_FAULT"

# Extensions that fit each libsndfile major format (lower case).
_EXTENSIONS = {
    "WAV": (".wav", ".wave"),
    "WAVEX": (".wav", ".wave"),
    "RF64": (".wav", ".rf64"),
    "W64": (".w64", ".wav"),
    "FLAC": (".flac",),
    "OGG": (".ogg", ".oga", ".opus"),
    "MP3": (".mp3",),
    "AIFF": (".aif", ".aiff", ".aifc"),
    "AU": (".au", ".snd"),
    "CAF": (".caf",),
    "NIST": (".sph", ".nist", ".wav"),  # TIMIT ships NIST SPHERE files named .WAV
}
# libsndfile's header log for a WAV whose data chunk is shorter than the header says.
_SHORT_DATA = re.compile(rb"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_BLOCK_ALIGN = re.compile(rb"Block Align\s*:\s*(\d+)")


@dataclass(frozen=True)
class CheckSettings:
    """What counts as a problem. Defaults are the documented CLI defaults."""

    decode: bool = True
    target_rate: int = 16000
    duration_tolerance_s: float = DURATION_TOLERANCE_S
    clip_level: float = 0.999
    clip_fraction: float = 0.001
    noise_silence_db: float = -80.0


@dataclass(frozen=True, slots=True)
class Segment:
    """One manifest line's use of a file."""

    ref: int  # the parent's handle for the line
    offset: float  # seconds
    duration: float | None  # seconds; None when the line's duration is missing or invalid (measure the rest)
    partial: bool  # a deliberate part of the file (the line names an offset, or it is a lhotse cut)
    noise: bool  # from a noise manifest
    channel: int | None = None  # the channel training reads (a lhotse MonoCut's); None: the average


@dataclass(frozen=True, slots=True)
class FileTask:
    path: str  # resolved
    segments: tuple[Segment, ...]


@dataclass(slots=True)
class FileResult:
    path: str
    sample_rate: int | None = None
    frames: int | None = None  # samples per channel really there (decoding may find fewer than the header)
    findings: list[tuple[int, str, str]] = field(default_factory=list)  # (segment ref, category, reason)

    def add(self, ref: int, category: str, reason: str) -> None:
        self.findings.append((ref, category, reason))

    def flag(self, ref: int, category: str, problem: str, hint: str | None = None) -> None:
        """A finding about this file: `audio <path>: <problem>. <hint>` (the category's hint by default)."""
        self.add(ref, category, audio_reason(category, self.path, problem, hint))


def audio_reason(category: str, path: str, problem: str, hint: str | None = None) -> str:
    return str(AudioLoadError(category, path, problem, hint or default_hint(category)))


def check_file(task: FileTask, settings: CheckSettings) -> FileResult:
    result = FileResult(task.path)
    if FAULT_ENV in os.environ:
        _injected_fault(task.path)
    try:
        check_path(task.path)
        sound = open_audio(task.path)
    except AudioLoadError as exc:
        reason = _load_error_reason(exc)
        for segment in task.segments:
            result.add(segment.ref, exc.category, reason)
        return result
    with sound:
        _check_open_file(sound, task, settings, result)
    return result


def _load_error_reason(exc: AudioLoadError) -> str:
    """A loader error as a finding reason, in the `(expected X, got Y)` form, with a hint."""
    got = None
    if exc.category == "broken_symlink":
        got = "a link to " + exc.problem.partition("(points to ")[2].rstrip(")")
    elif exc.category == "symlink_loop":
        got = "a loop"
    elif exc.category == "unreadable" and "(" not in exc.problem:
        got = _permissions(exc.path)
    problem = expected_form(exc.category, exc.problem, got)
    return audio_reason(exc.category, exc.path, problem, hint_of(str(exc), exc.problem))


def _permissions(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or "no permission"
    return f"mode {st.st_mode & 0o7777:04o}, owner uid {st.st_uid}, while running as uid {os.geteuid()}"


def _injected_fault(path: str) -> None:
    action, _, target = os.environ[FAULT_ENV].partition(":")
    if path != target:
        return
    if action == "stall":
        read_end, _write_end = os.pipe()  # we hold the write end, so the read never sees EOF
        os.read(read_end, 1)
    elif action == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif action == "raise":
        raise RuntimeError(f"injected by {FAULT_ENV}")


def _check_open_file(sound: sf.SoundFile, task: FileTask, settings: CheckSettings, result: FileResult) -> None:
    rate, frames = sound.samplerate, sound.frames
    result.sample_rate, result.frames = rate, frames
    if frames <= 0:
        for segment in task.segments:
            result.flag(segment.ref, "empty", "the file has no samples (expected > 0, got 0)")
        return
    # File-level warnings go to the first line that uses the file, not to every segment of it.
    _check_format(sound, settings, task.segments, result)
    loader_tolerance = int(DURATION_TOLERANCE_S * rate)  # what read_audio allows; not an option
    reported_tolerance = int(round(settings.duration_tolerance_s * rate))
    for segment in task.segments:
        ref, start = segment.ref, int(round(segment.offset * rate))
        if start >= frames:
            result.flag(
                ref,
                "offset_beyond_end",
                f"offset is past the end of the file (expected < {frames / rate:.3f} s, got {segment.offset:.3f} s)",
            )
            continue
        available = frames - start
        wanted = available if segment.duration is None else int(round(segment.duration * rate))
        if wanted > available + loader_tolerance:
            result.flag(
                ref,
                "truncated",
                f"the manifest segment needs more audio than the file holds "
                f"(expected offset + duration <= {(frames + loader_tolerance) / rate:.3f} s, "
                f"got {(start + wanted) / rate:.3f} s)",
            )
            continue
        excess = wanted - available  # > 0: the manifest claims more; < 0: less than the file has
        if excess > reported_tolerance or (not segment.partial and -excess > reported_tolerance):
            result.flag(
                ref,
                "duration_mismatch",
                f"the manifest duration differs from the file "
                f"(expected {available / rate:.3f} s ± {settings.duration_tolerance_s:g} s, "
                f"got {wanted / rate:.3f} s)",
            )
        if segment.channel is not None and segment.channel >= sound.channels:  # read_audio refuses it too
            result.flag(
                ref,
                "not_audio",
                f"the cut reads a channel the file does not have "
                f"(expected channel < {sound.channels}, got {segment.channel})",
                "Fix the cut's channel or the recording",
            )
            continue
        if settings.decode and sound.seekable():
            _decode_segment(sound, segment, start, min(wanted, available), settings, result)
        elif settings.decode:  # a codec libsndfile cannot seek in (GSM 6.10): every segment from the start
            with open_audio(task.path) as again:
                _decode_segment(again, segment, start, min(wanted, available), settings, result)


def _check_format(
    sound: sf.SoundFile, settings: CheckSettings, segments: tuple[Segment, ...], result: FileResult
) -> None:
    ref = segments[0].ref
    extension = os.path.splitext(result.path)[1].lower()
    expected = _EXTENSIONS.get(sound.format)
    if expected and extension not in expected:
        result.flag(
            ref,
            "wrong_extension",
            f"the extension does not match the {sound.format} data inside "
            f"(expected {' or '.join(expected)}, got {extension or 'no extension'!r})",
        )
    if sound.samplerate != settings.target_rate:
        result.flag(
            ref,
            "needs_resampling",
            f"sample rate needs resampling on every load "
            f"(expected {settings.target_rate} Hz, got {sound.samplerate} Hz)",
        )
    if sound.channels > 1:
        channel = segments[0].channel
        done = "averaged" if channel is None else f"decoded to keep channel {channel}"
        result.flag(
            ref,
            "needs_downmix",
            f"several channels are {done} on every load (expected 1 channel, got {sound.channels})",
        )
    promised = _header_promised_frames(sound)
    if promised is not None and promised > sound.frames:
        rate = sound.samplerate
        result.flag(
            ref,
            "truncated_file",
            f"the file is shorter than its header says "
            f"(expected {promised / rate:.3f} s, got {sound.frames / rate:.3f} s)",
        )


def _header_promised_frames(sound: sf.SoundFile) -> int | None:
    """Frames a WAV header promises when libsndfile found less data than that, else None."""
    if not sound.format.startswith(("WAV", "RF64", "W64")):
        return None
    info = sound.extra_info.encode("utf-8", "replace")
    short = _SHORT_DATA.search(info)
    align = _BLOCK_ALIGN.search(info)
    if short is None or align is None or int(align.group(1)) <= 0:
        return None
    return int(short.group(1)) // int(align.group(1))


@dataclass
class _Stats:
    """Running statistics of a segment, block by block (mono = the signal training sees: the
    channel the cut names, or the average of all channels).

    Three passes per block (sum of squares, max, min): the sum of squares is non-finite exactly when
    a sample is NaN or Inf (or squares overflow, which the slow path tells apart).
    """

    frames: int = 0
    first_non_finite: int | None = None  # frame index within the segment
    mono_max: float = -math.inf
    mono_min: float = math.inf
    squares: float = 0.0
    clipped: int = 0  # samples of any channel at or beyond the clip level
    samples: int = 0  # frames x channels
    peak: float = 0.0  # largest |sample| of any channel

    def add(self, block: np.ndarray, clip_level: float, channel: int | None) -> None:
        if block.ndim == 1:
            mono = block
        else:
            mono = block[:, channel] if channel is not None else block.mean(axis=1, dtype=np.float32)
        with np.errstate(over="ignore"):  # huge float samples: out_of_range, judged below
            squares = float(np.dot(mono, mono))
        if not math.isfinite(squares):
            bad = np.flatnonzero(~np.isfinite(block).reshape(len(block), -1).all(axis=1))
            if len(bad):
                self.first_non_finite = self.frames + int(bad[0])
                return
        self.frames += len(block)
        self.samples += block.size
        self.squares += squares
        high, low = float(mono.max()), float(mono.min())
        self.mono_max, self.mono_min = max(self.mono_max, high), min(self.mono_min, low)
        if block.ndim == 2:
            high, low = float(block.max()), float(block.min())
        self.peak = max(self.peak, high, -low)
        if high >= clip_level or low <= -clip_level:
            self.clipped += int(np.count_nonzero(np.abs(block) >= clip_level))


def _decode_segment(
    sound: sf.SoundFile,
    segment: Segment,
    start: int,
    wanted: int,
    settings: CheckSettings,
    result: FileResult,
) -> None:
    rate, ref = sound.samplerate, segment.ref
    stats = _Stats()
    try:
        seek_frame(sound, start)
        while stats.frames < wanted and stats.first_non_finite is None:
            block = sound.read(min(DECODE_BLOCK_FRAMES, wanted - stats.frames), dtype="float32")
            if len(block) == 0:
                break
            stats.add(block, settings.clip_level, segment.channel)
    except (sf.LibsndfileError, RuntimeError) as exc:
        result.frames = min(result.frames, start + stats.frames)
        result.flag(
            ref,
            "decode_error",
            f"decoding failed (expected {wanted / rate:.3f} s of samples, "
            f"got an error after {stats.frames / rate:.3f} s: {exc})",
        )
        return
    if stats.first_non_finite is not None:
        result.flag(
            ref,
            "nan_inf",
            f"samples contain NaN or Inf (expected finite samples, "
            f"got the first at {(start + stats.first_non_finite) / rate:.3f} s)",
        )
        return
    if stats.frames < wanted - int(DURATION_TOLERANCE_S * rate):  # read_audio's rule
        result.frames = min(result.frames, start + stats.frames)
        result.flag(
            ref,
            "truncated",
            f"decoding stopped early (expected {wanted / rate:.3f} s as the header "
            f"promises, got {stats.frames / rate:.3f} s)",
            "The file is cut short or damaged: re-encode or remove it",
        )
        return
    if stats.frames == 0:
        result.flag(ref, "empty", "the segment has no samples (expected > 0, got 0)")
        return
    _judge_content(stats, segment, settings, result)


def _judge_content(stats: _Stats, segment: Segment, settings: CheckSettings, result: FileResult) -> None:
    ref = segment.ref
    rms = math.sqrt(max(stats.squares, 0.0) / stats.frames)
    rms_db = 20 * math.log10(rms) if rms > 0 else -math.inf
    peak_to_peak = stats.mono_max - stats.mono_min
    peak = max(stats.mono_max, -stats.mono_min)
    if peak > MAX_ABS_SAMPLE:  # the loader's rule (audio.check_samples); clipping would say nothing more
        result.flag(
            ref,
            "out_of_range",
            f"float samples so far beyond full scale that their energy "
            f"overflows float32 (expected |x| <= {MAX_ABS_SAMPLE:g}, got {peak:.3g})",
        )
        return
    if segment.noise and rms_db <= settings.noise_silence_db:  # the noise loader's test (noise.rms_db)
        result.flag(
            ref,
            "silent_noise",
            f"the noise is silent (expected RMS above {settings.noise_silence_db:g} dBFS, got {rms_db:.1f} dBFS)",
        )
    elif stats.mono_max == 0.0 and stats.mono_min == 0.0:
        result.flag(ref, "all_zero", f"every sample is zero (expected sound, got {stats.frames} zeros)")
    elif peak_to_peak < DC_PEAK_TO_PEAK and stats.frames >= DC_MIN_SECONDS * (result.sample_rate or 0):
        result.flag(
            ref,
            "dc_only",
            f"the signal is a constant {(stats.mono_max + stats.mono_min) / 2:+.6f} "
            f"(expected peak-to-peak >= {DC_PEAK_TO_PEAK:g}, got {peak_to_peak:.2g})",
        )
    if stats.samples and stats.clipped / stats.samples > settings.clip_fraction:
        result.flag(
            ref,
            "clipping",
            f"too many samples at full scale (expected <= "
            f"{100 * settings.clip_fraction:g}% at |x| >= {settings.clip_level:g}, "
            f"got {100 * stats.clipped / stats.samples:.2f}%"
            + (f", peaks of {stats.peak:.3g}: float samples beyond full scale 1.0" if stats.peak > 2.0 else "")
            + ")",
        )
