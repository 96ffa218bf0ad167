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

from nestkit.errors import AudioLoadError

# A manifest duration may exceed what the file holds by this much before the segment counts as
# truncated (header rounding, encoder padding). Same default as validate-manifest's tolerance.
DURATION_TOLERANCE_S = 0.1

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


def check_path(path: str) -> os.stat_result:
    """`stat` a path and refuse anything that is not a readable regular file (opens nothing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise AudioLoadError("broken_symlink", path, f"broken symbolic link (points to {os.readlink(path)!r})",
                                 "Fix the link or the manifest path") from None
        raise AudioLoadError("missing", path, "no such file", "Fix the manifest path or restore the file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AudioLoadError("symlink_loop", path, "symbolic link loop", "Fix the link") from None
        raise AudioLoadError("unreadable", path, f"cannot stat ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise AudioLoadError(
            "not_regular_file", path, f"not a regular file (expected an audio file, got {file_kind(st.st_mode)})",
            "It was not opened: a FIFO or device would block the reader",
        )
    if not os.access(path, os.R_OK):
        raise AudioLoadError("unreadable", path, "permission denied", "Make the file readable by the training user")
    return st


def _open(path: str) -> sf.SoundFile:
    try:
        return sf.SoundFile(path)
    except sf.LibsndfileError as exc:
        raise AudioLoadError("not_audio", path, f"not readable as audio ({exc.error_string})",
                             "Re-encode it as WAV/FLAC or remove it from the manifest") from None
    except (RuntimeError, TypeError) as exc:
        raise AudioLoadError("not_audio", path, f"not readable as audio ({exc})") from None
    except OSError as exc:
        raise AudioLoadError("unreadable", path, f"cannot open ({exc.strerror or exc})") from None


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    if orig_sr == target_sr:
        return samples
    return soxr.resample(samples, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def read_audio(
    path: str, offset: float = 0.0, duration: float | None = None, target_sr: int = 16000, channel: int | None = None
) -> np.ndarray:
    """Samples `[offset, offset + duration)` of `path`: mono float32 at `target_sr`.

    Multi-channel audio is averaged (NeMo's downmix) unless `channel` picks one. Sample positions
    are rounded (`round(seconds * rate)`), so an offset written as decimal seconds lands on the
    sample it names. Raises `AudioLoadError` with one of `LOAD_FAILURES`.
    """
    check_path(path)
    with _open(path) as f:
        sr, frames = f.samplerate, f.frames
        if frames <= 0:
            raise AudioLoadError("empty", path, "the file has no samples", "Remove it from the manifest")
        start = int(round(offset * sr))
        if start >= frames:
            raise AudioLoadError(
                "offset_beyond_end", path,
                f"offset {offset:.3f} s is past the end of the file (expected < {frames / sr:.3f} s)",
                "Fix the offset in the manifest",
            )
        wanted = frames - start if duration is None else int(round(duration * sr))
        tolerance = int(DURATION_TOLERANCE_S * sr)
        if start + wanted > frames + tolerance:
            raise AudioLoadError(
                "truncated", path,
                f"segment needs {(start + wanted) / sr:.3f} s but the file holds {frames / sr:.3f} s "
                f"(offset {offset:.3f} s, duration {wanted / sr:.3f} s)",
                "Re-measure durations with `nestkit validate-manifest --fix-durations OUT`",
            )
        wanted = min(wanted, frames - start)
        try:
            if start:
                f.seek(start)
            data = f.read(wanted, dtype="float32")
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioLoadError("decode_error", path, f"decoding failed at {start / sr:.3f} s ({exc})",
                                 "The file is damaged: re-encode or remove it") from None
    if len(data) < wanted - tolerance:
        raise AudioLoadError(
            "truncated", path,
            f"decoding stopped after {len(data) / sr:.3f} s of the {wanted / sr:.3f} s the header promises",
            "The file is cut short or damaged: re-encode or remove it",
        )
    if len(data) == 0:
        raise AudioLoadError("empty", path, "the requested segment has no samples")
    if data.ndim == 2:
        if channel is not None and channel >= data.shape[1]:
            raise AudioLoadError("not_audio", path, f"channel {channel} does not exist (the file has {data.shape[1]})")
        data = data[:, channel] if channel is not None else data.mean(axis=1, dtype=np.float32)
    if not math.isfinite(float(np.sum(data, dtype=np.float64))):
        raise AudioLoadError("nan_inf", path, "samples contain NaN or Inf", "Re-encode the file or remove it")
    return resample(np.ascontiguousarray(data, dtype=np.float32), sr, target_sr)
