"""Reading audio safely: mono float32 at the target rate, or an `AudioLoadError` with a category.

Before anything is opened the path is `stat`-ed: a FIFO, socket, device or directory is refused
up front, because opening a FIFO blocks until a writer appears and would hang a worker forever.
Segments are read by seeking (no full-file decode), multi-channel audio is averaged to mono and
resampled with soxr's HQ filter -- the resampler NeMo uses through librosa (`res_type="soxr_hq"`);
torchaudio is not needed.
"""

from __future__ import annotations

import errno
import math
import os
import stat

import numpy as np
import soundfile as sf
import soxr

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

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def file_kind(mode: int) -> str:
    for test, name in _FILE_KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


# stat errors that mean "there is no file at this path", not "the file cannot be read"
_NO_FILE_ERRNOS = {
    errno.ENOTDIR: "a folder on the path is a file",
    errno.ENAMETOOLONG: "the path is longer than the file system allows",
}


def check_path(path: str) -> os.stat_result:
    """`stat` a path and refuse anything that is not a readable regular file (opens nothing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise AudioLoadError(
                "broken_symlink",
                path,
                f"broken symbolic link (points to {os.readlink(path)!r})",
                "Fix the link or the manifest path",
            ) from None
        raise AudioLoadError("missing", path, "no such file", "Fix the manifest path or restore the file") from None
    except ValueError:  # a NUL character: no file can have that name, and os.stat refuses to ask
        raise AudioLoadError(
            "missing", path, "no such file (a path with a NUL character)", "Fix the manifest path"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AudioLoadError("symlink_loop", path, "symbolic link loop", "Fix the link") from None
        if exc.errno in _NO_FILE_ERRNOS:
            raise AudioLoadError(
                "missing", path, f"no such file ({_NO_FILE_ERRNOS[exc.errno]})", "Fix the manifest path"
            ) from None
        raise AudioLoadError("unreadable", path, f"cannot stat ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise AudioLoadError(
            "not_regular_file",
            path,
            f"not a regular file (expected an audio file, got {file_kind(st.st_mode)})",
            "It was not opened: a FIFO or device would block the reader",
        )
    if not os.access(path, os.R_OK):
        raise AudioLoadError("unreadable", path, "permission denied", "Make the file readable by the training user")
    return st


def _open(path: str) -> sf.SoundFile:
    try:
        return sf.SoundFile(path)
    except sf.LibsndfileError as exc:
        if _zero_bytes(path):
            raise AudioLoadError(
                "empty",
                path,
                "the file is empty (expected audio data, got 0 bytes)",
                "Re-copy the file or remove it from the manifest",
            ) from None
        raise AudioLoadError(
            "not_audio",
            path,
            f"not readable as audio ({exc.error_string})",
            "Re-encode it as WAV/FLAC or remove it from the manifest",
        ) from None
    except (RuntimeError, TypeError) as exc:
        raise AudioLoadError("not_audio", path, f"not readable as audio ({exc})") from None
    except OSError as exc:
        raise AudioLoadError("unreadable", path, f"cannot open ({exc.strerror or exc})") from None


def _zero_bytes(path: str) -> bool:
    """True for a regular file with no bytes at all (read, not stat: /proc files stat as size 0)."""
    try:
        with open(path, "rb") as f:
            return f.read(1) == b""
    except OSError:
        return False


def seek_frame(f: sf.SoundFile, start: int) -> None:
    """Position a file just opened (or read from the start) at frame `start`.

    libsndfile cannot seek in some codecs (GSM 6.10 in WAV): there the frames before `start` are
    decoded and dropped, block by block, which is what any reader of such a file has to do.
    """
    if f.seekable():
        if f.tell() != start:
            f.seek(start)
        return
    left = start
    while left > 0:
        skipped = len(f.read(min(left, 1 << 16), dtype="float32"))
        if skipped == 0:
            break
        left -= skipped


def check_samples(mono: np.ndarray, rate: int, path: str, require_signal: bool) -> None:
    """Refuse finite samples training cannot use: beyond MAX_ABS_SAMPLE (`out_of_range`) and, with
    `require_signal`, a segment with nothing to learn from: all zeros (`all_zero`) or a constant
    (`dc_only`). The rules validate-manifest applies to every decoded segment.
    """
    high, low = float(mono.max()), float(mono.min())
    if max(high, -low) > MAX_ABS_SAMPLE:
        raise AudioLoadError(
            "out_of_range",
            path,
            f"float samples so far beyond full scale that their "
            f"energy overflows float32 (expected |x| <= {MAX_ABS_SAMPLE:g}, "
            f"got {max(high, -low):.3g})",
            "Re-encode the file with samples scaled to [-1, 1] or remove it",
        )
    if not require_signal:
        return
    if high == 0.0 and low == 0.0:
        raise AudioLoadError(
            "all_zero",
            path,
            f"every sample is zero (expected sound, got {mono.size} zeros)",
            "Remove the line: there is nothing to learn from",
        )
    if high - low < DC_PEAK_TO_PEAK and mono.size >= DC_MIN_SECONDS * rate:
        raise AudioLoadError(
            "dc_only",
            path,
            f"the signal is a constant {(high + low) / 2:+.6f} "
            f"(expected peak-to-peak >= {DC_PEAK_TO_PEAK:g}, got {high - low:.2g})",
            "Remove the line: there is nothing to learn from",
        )


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    if orig_sr == target_sr:
        return samples
    return soxr.resample(samples, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def read_audio(
    path: str,
    offset: float = 0.0,
    duration: float | None = None,
    target_sr: int = 16000,
    channel: int | None = None,
    require_signal: bool = False,
) -> np.ndarray:
    """Samples `[offset, offset + duration)` of `path`: mono float32 at `target_sr`.

    Multi-channel audio is averaged (NeMo's downmix) unless `channel` picks one. Sample positions
    are rounded (`round(seconds * rate)`), so an offset written as decimal seconds lands on the
    sample it names. `require_signal` also refuses all-zero and constant segments (utterances;
    noise has its own silence rule). Raises `AudioLoadError` with one of `LOAD_FAILURES`.
    """
    check_path(path)
    with _open(path) as f:
        sr, frames = f.samplerate, f.frames
        if frames <= 0:
            raise AudioLoadError(
                "empty", path, "the file has no samples (expected > 0, got 0)", "Remove it from the manifest"
            )
        start = int(round(offset * sr))
        if start >= frames:
            raise AudioLoadError(
                "offset_beyond_end",
                path,
                f"offset {offset:.3f} s is past the end of the file (expected < {frames / sr:.3f} s)",
                "Fix the offset in the manifest",
            )
        wanted = frames - start if duration is None else int(round(duration * sr))
        tolerance = int(DURATION_TOLERANCE_S * sr)
        if start + wanted > frames + tolerance:
            raise AudioLoadError(
                "truncated",
                path,
                f"segment needs {(start + wanted) / sr:.3f} s but the file holds {frames / sr:.3f} s "
                f"(offset {offset:.3f} s, duration {wanted / sr:.3f} s)",
                "Re-measure durations with `nestkit validate-manifest --fix-durations OUT`",
            )
        if channel is not None and channel >= f.channels:  # a mono file too: the cut names a channel it lacks
            raise AudioLoadError(
                "not_audio",
                path,
                f"the cut reads a channel the file does not have (expected channel < {f.channels}, got {channel})",
                "Fix the cut's channel or the recording",
            )
        wanted = min(wanted, frames - start)
        try:
            seek_frame(f, start)
            data = f.read(wanted, dtype="float32")
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioLoadError(
                "decode_error",
                path,
                f"decoding failed (expected {wanted / sr:.3f} s of "
                f"samples from {start / sr:.3f} s, got an error: {exc})",
                "The file is damaged: re-encode or remove it",
            ) from None
    if len(data) < wanted - tolerance:
        raise AudioLoadError(
            "truncated",
            path,
            f"decoding stopped early (expected {wanted / sr:.3f} s as the header promises, got {len(data) / sr:.3f} s)",
            "The file is cut short or damaged: re-encode or remove it",
        )
    if len(data) == 0:
        raise AudioLoadError("empty", path, "the segment has no samples (expected > 0, got 0)", "Remove the line")
    if data.ndim == 2:
        data = data[:, channel] if channel is not None else data.mean(axis=1, dtype=np.float32)
    if not math.isfinite(float(np.sum(data, dtype=np.float64))):
        first = int(np.flatnonzero(~np.isfinite(data))[0])
        raise AudioLoadError(
            "nan_inf",
            path,
            f"samples contain NaN or Inf (expected finite samples, got the first at {offset + first / sr:.3f} s)",
            "Re-encode the file or remove it",
        )
    check_samples(data, sr, path, require_signal)
    return resample(np.ascontiguousarray(data, dtype=np.float32), sr, target_sr)
