"""Reading audio safely: mono float32 at the target rate, or an `AudioLoadError` with a category.

Before anything is opened the path is `stat`-ed: a FIFO, socket, device or directory is refused
up front, because opening a FIFO blocks until a writer appears and would hang a worker forever.
Segments are read by seeking (no full-file decode), multi-channel audio is averaged to mono and
resampled with soxr's HQ filter -- the resampler NeMo uses through librosa (`res_type="soxr_hq"`);
torchaudio is not needed. What a segment must be to be used is decided by `nestkit.data.sample_rules`,
the rules validate-manifest applies too. `read_audio_from` reads an already-open file object (a tar
member's bytes) by the same rules.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from nestkit.core.errors import AudioLoadError
from nestkit.data.sample_rules import (  # re-exported: the loader's rules are these
    DC_MIN_SECONDS,
    DC_PEAK_TO_PEAK,
    DURATION_TOLERANCE_S,
    LOAD_FAILURES,
    MAX_ABS_SAMPLE,
    SegmentStats,
    check_channel,
    check_segment,
    check_values,
    decode_error,
    segment_frames,
    to_mono,
)

__all__ = [
    "DC_MIN_SECONDS",
    "DC_PEAK_TO_PEAK",
    "DURATION_TOLERANCE_S",
    "LOAD_FAILURES",
    "MAX_ABS_SAMPLE",
    "check_path",
    "check_samples",
    "decode_blocks",
    "open_audio",
    "read_audio",
    "read_audio_from",
    "resample",
]

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


def open_audio(source: str | BinaryIO, where: str | None = None) -> sf.SoundFile:
    """Open a path or an already-open binary file object (a tar member's bytes) for decoding.

    `where` names the audio in errors (default: the path). Raises AudioLoadError: `empty` for 0 bytes,
    `not_audio` for what libsndfile cannot parse, `unreadable` for an I/O error.
    """
    where = where if where is not None else str(source)
    try:
        return sf.SoundFile(source)
    except sf.LibsndfileError as exc:
        if _zero_bytes(source):
            raise AudioLoadError(
                "empty",
                where,
                "the file is empty (expected audio data, got 0 bytes)",
                "Re-copy the file or remove it from the manifest",
            ) from None
        raise AudioLoadError(
            "not_audio",
            where,
            f"not readable as audio ({exc.error_string})",
            "Re-encode it as WAV/FLAC or remove it from the manifest",
        ) from None
    except (RuntimeError, TypeError) as exc:
        raise AudioLoadError("not_audio", where, f"not readable as audio ({exc})") from None
    except OSError as exc:
        raise AudioLoadError("unreadable", where, f"cannot open ({exc.strerror or exc})") from None


def _zero_bytes(source: str | BinaryIO) -> bool:
    """True for audio with no bytes at all (read, not stat: /proc files stat as size 0)."""
    try:
        if isinstance(source, str):
            with open(source, "rb") as f:
                return f.read(1) == b""
        source.seek(0)
        return source.read(1) == b""
    except (OSError, ValueError):
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


def decode_blocks(f: sf.SoundFile, where: str, start: int, wanted: int, block_frames: int) -> Iterator[np.ndarray]:
    """Frames `[start, start + wanted)` of an open file, `block_frames` at a time (all channels).

    Stops early where the audio does; a decoder failure is a `decode_error` naming how far it got. The
    loader asks for one block (its whole segment), validate-manifest for bounded ones.
    """
    rate, decoded = f.samplerate, 0
    try:
        seek_frame(f, start)
        while decoded < wanted:
            ask = min(block_frames, wanted - decoded)
            block = f.read(ask, dtype="float32")
            if len(block):
                decoded += len(block)
                yield block
            if len(block) < ask:  # the end of the audio
                return
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise decode_error(where, start, wanted, decoded, rate, exc) from None


def check_samples(mono: np.ndarray, rate: int, path: str, require_signal: bool) -> None:
    """The sample rules for samples decoded elsewhere (lhotse): out_of_range, all_zero, dc_only."""
    stats = SegmentStats()
    stats.add(mono)
    check_values(stats, path, rate, require_signal)


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
    with open_audio(path) as f:
        return _read_segment(f, path, offset, duration, target_sr, channel, require_signal)


def read_audio_from(
    file: BinaryIO,
    where: str,
    offset: float = 0.0,
    duration: float | None = None,
    target_sr: int = 16000,
    channel: int | None = None,
    require_signal: bool = False,
) -> np.ndarray:
    """`read_audio` for an already-open binary file object (e.g. `io.BytesIO` of a tar member).

    The same rules, the same errors; `where` names the audio in them (e.g. `shard.tar[member.flac]`).
    The path checks (`check_path`) are the caller's: there is no path here.
    """
    with open_audio(file, where) as f:
        return _read_segment(f, where, offset, duration, target_sr, channel, require_signal)


def _read_segment(
    f: sf.SoundFile,
    where: str,
    offset: float,
    duration: float | None,
    target_sr: int,
    channel: int | None,
    require_signal: bool,
) -> np.ndarray:
    rate = f.samplerate
    start, wanted = segment_frames(where, offset, duration, rate, f.frames)
    check_channel(where, channel, f.channels)
    blocks = list(decode_blocks(f, where, start, wanted, block_frames=wanted))
    data = blocks[0] if len(blocks) == 1 else np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    mono = to_mono(data, channel)
    stats = SegmentStats()
    stats.add(mono)
    check_segment(stats, where, start, wanted, rate, require_signal)
    return resample(np.ascontiguousarray(mono, dtype=np.float32), rate, target_sr)
