"""Real test data for the shard tests: generated audio, Shar written by lhotse's own writer, tars."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf


def tone(seconds: float, seed: int, sample_rate: int = 16000, channels: int = 1) -> np.ndarray:
    """A sine plus a little noise, different for every seed (never silent)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    x = 0.3 * np.sin(2 * np.pi * (200 + 40 * seed) * t) + 0.02 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def make_wavs(folder: Path, n: int, seconds: float = 0.5, sample_rate: int = 16000, fmt: str = "WAV") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"utt{i:03d}.{fmt.lower()}"
        sf.write(str(path), tone(seconds + 0.01 * i, i, sample_rate), sample_rate, format=fmt)
        paths.append(str(path))
    return paths


def encoded(samples: np.ndarray, sample_rate: int = 16000, fmt: str = "FLAC") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format=fmt)
    return buf.getvalue()


def make_tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> str:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def lhotse_shar(folder: Path, wavs: list[str], shard_size: int, fmt: str = "flac") -> dict[str, list[str]]:
    """Shar written by lhotse 1.33's own CutSet.to_shar (the writer nestkit must read)."""
    from lhotse import CutSet, Recording

    folder.mkdir(parents=True, exist_ok=True)
    cuts = CutSet.from_cuts(Recording.from_file(w).to_cut() for w in wavs)
    return cuts.to_shar(str(folder), fields={"recording": fmt}, shard_size=shard_size)


def truncate(path: str, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


def tar_offsets(path: str) -> dict[str, tuple[int, int]]:
    """name -> (data offset, size) as Python's tarfile sees them (the reference)."""
    with tarfile.open(path) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isreg()}
