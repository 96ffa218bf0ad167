"""Check one audio file (or a tar member's bytes) against the manifest segments that use it. Runs
inside worker processes.

The path and the header go through the loader's own `check_path` and opener, and every segment goes
through the loader's own sample rules (`nestkit.data.sample_rules`: segment bounds, then the decoded
blocks accumulated and judged), so a segment that training would refuse is an error here with the
same category and message. On top of that come the checks a loader cannot afford on every read:
wrong extension, resampling/downmixing, duration mismatch, clipping, silent noise.

The file is opened once for all its segments and each segment is decoded once, in blocks of about a
minute so a ten-hour file needs no more memory than a short one. Nothing here blocks forever by
itself (a FIFO is refused by `stat`), but a stalled mount can block any syscall, so the parent
process bounds each file with a timeout and kills the worker (see validate.pool).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import soundfile as sf

from nestkit.core.errors import AudioLoadError
from nestkit.data.audio import check_path, decode_blocks, open_audio
from nestkit.data.sample_rules import (
    DURATION_TOLERANCE_S,
    SegmentStats,
    check_channel,
    check_segment,
    segment_frames,
    to_mono,
)
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


@dataclass(slots=True)
class FileResult:
    path: str  # what the findings name: a resolved path, or `shard:member`
    sample_rate: int | None = None
    frames: int | None = None  # samples per channel really there (decoding may find fewer than the header)
    findings: list[tuple[int, str, str]] = field(default_factory=list)  # (segment ref, category, reason)

    def add(self, ref: int, category: str, reason: str) -> None:
        self.findings.append((ref, category, reason))

    def flag(self, ref: int, category: str, problem: str, hint: str | None = None) -> None:
        """A finding about this file: `audio <path>: <problem>. <hint>` (the category's hint by default)."""
        self.add(ref, category, audio_reason(category, self.path, problem, hint))

    def refused(self, ref: int, exc: AudioLoadError) -> None:
        """A finding from a sample rule: the loader's own category, problem and hint."""
        self.flag(ref, exc.category, exc.problem, hint_of(str(exc), exc.problem))


def audio_reason(category: str, path: str, problem: str, hint: str | None = None) -> str:
    return str(AudioLoadError(category, path, problem, hint or default_hint(category)))


def failed_result(where: str, segments: tuple[Segment, ...], category: str, problem: str) -> FileResult:
    """Every segment of the audio gets the same finding (the worker died, it timed out, ...)."""
    result = FileResult(where)
    for segment in segments:
        result.add(segment.ref, category, audio_reason(category, where, problem))
    return result


@dataclass(frozen=True, slots=True)
class FileTask:
    """One audio file and the segments the manifests read of it: a job for a worker (see validate.pool)."""

    path: str  # resolved
    segments: tuple[Segment, ...]
    unit: ClassVar[str] = "file"

    def run(self, settings: CheckSettings) -> FileResult:
        return check_file(self, settings)

    def failed(self, category: str, problem: str) -> FileResult:
        return failed_result(self.path, self.segments, category, problem)


def check_file(task: FileTask, settings: CheckSettings) -> FileResult:
    result = FileResult(task.path)
    if FAULT_ENV in os.environ:
        injected_fault(task.path)
    try:
        check_path(task.path)
        sound = open_audio(task.path)
    except AudioLoadError as exc:
        reason = _load_error_reason(exc)
        for segment in task.segments:
            result.add(segment.ref, exc.category, reason)
        return result
    with sound:
        check_audio(sound, lambda: open_audio(task.path), task.path, task.segments, settings, result)
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


def injected_fault(path: str) -> None:
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


def check_audio(
    sound: sf.SoundFile,
    reopen: Callable[[], sf.SoundFile],
    where: str,
    segments: tuple[Segment, ...],
    settings: CheckSettings,
    result: FileResult,
) -> None:
    """Check every segment of opened audio (a file, or a tar member's bytes) by the loader's rules.

    `reopen` opens it again from the start, for codecs libsndfile cannot seek in (GSM 6.10).
    """
    rate, frames = sound.samplerate, sound.frames
    result.sample_rate, result.frames = rate, frames
    if frames > 0:  # file-level warnings go to the first line that uses the file, not to every segment
        _check_format(sound, settings, segments, result)
    reported_tolerance = int(round(settings.duration_tolerance_s * rate))
    for segment in segments:
        ref = segment.ref
        try:
            start, wanted = segment_frames(where, segment.offset, segment.duration, rate, frames)
        except AudioLoadError as exc:
            result.refused(ref, exc)
            continue
        available = frames - start
        asked = available if segment.duration is None else int(round(segment.duration * rate))
        excess = asked - available  # > 0: the manifest claims more; < 0: less than the file has
        if excess > reported_tolerance or (not segment.partial and -excess > reported_tolerance):
            result.flag(
                ref,
                "duration_mismatch",
                f"the manifest duration differs from the file "
                f"(expected {available / rate:.3f} s ± {settings.duration_tolerance_s:g} s, "
                f"got {asked / rate:.3f} s)",
            )
        try:
            check_channel(where, segment.channel, sound.channels)
        except AudioLoadError as exc:
            result.refused(ref, exc)
            continue
        if settings.decode and sound.seekable():
            _decode_segment(sound, where, segment, start, wanted, settings, result)
        elif settings.decode:  # a codec libsndfile cannot seek in (GSM 6.10): every segment from the start
            with reopen() as again:
                _decode_segment(again, where, segment, start, wanted, settings, result)


# lhotse's Shar writer names a member stored in its source's own format `<cut id>.original`
_SHAR_ORIGINAL = ".original"


def _check_format(
    sound: sf.SoundFile, settings: CheckSettings, segments: tuple[Segment, ...], result: FileResult
) -> None:
    ref = segments[0].ref
    extension = os.path.splitext(result.path)[1].lower()
    expected = _EXTENSIONS.get(sound.format)
    if expected and extension not in expected and extension != _SHAR_ORIGINAL:
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


@dataclass(slots=True)
class _Extras:
    """What the validator adds to the loader's statistics: clipping, over every channel."""

    clipped: int = 0  # samples of any channel at or beyond the clip level
    samples: int = 0  # frames x channels
    peak: float = 0.0  # largest |sample| of any channel

    def add(self, block: np.ndarray, clip_level: float) -> None:
        high, low = float(block.max()), float(block.min())
        self.samples += block.size
        self.peak = max(self.peak, high, -low)
        if high >= clip_level or low <= -clip_level:
            self.clipped += int(np.count_nonzero(np.abs(block) >= clip_level))


def _decode_segment(
    sound: sf.SoundFile,
    where: str,
    segment: Segment,
    start: int,
    wanted: int,
    settings: CheckSettings,
    result: FileResult,
) -> None:
    """Decode one segment in blocks through the loader's own rules, then the validator's extra checks."""
    stats, extras = SegmentStats(), _Extras()
    try:
        for block in decode_blocks(sound, where, start, wanted, DECODE_BLOCK_FRAMES):
            stats.add(to_mono(block, segment.channel))
            if stats.first_non_finite is None:
                extras.add(block, settings.clip_level)
        check_segment(stats, where, start, wanted, sound.samplerate, require_signal=not segment.noise)
    except AudioLoadError as exc:
        if exc.category in ("decode_error", "truncated"):  # what a --fix-durations run may measure
            result.frames = min(result.frames or 0, start + stats.frames)
        result.refused(segment.ref, exc)
        if exc.category not in ("all_zero", "dc_only"):
            return
    _judge_extras(stats, extras, segment, settings, result)


def _judge_extras(
    stats: SegmentStats, extras: _Extras, segment: Segment, settings: CheckSettings, result: FileResult
) -> None:
    ref = segment.ref
    rms_db = stats.rms_db()
    if segment.noise and rms_db <= settings.noise_silence_db:  # the noise loader's test (noise.rms_db)
        result.flag(
            ref,
            "silent_noise",
            f"the noise is silent (expected RMS above {settings.noise_silence_db:g} dBFS, got {rms_db:.1f} dBFS)",
        )
    if extras.samples and extras.clipped / extras.samples > settings.clip_fraction:
        result.flag(
            ref,
            "clipping",
            f"too many samples at full scale (expected <= "
            f"{100 * settings.clip_fraction:g}% at |x| >= {settings.clip_level:g}, "
            f"got {100 * extras.clipped / extras.samples:.2f}%"
            + (f", peaks of {extras.peak:.3g}: float samples beyond full scale 1.0" if extras.peak > 2.0 else "")
            + ")",
        )
