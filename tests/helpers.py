"""Helpers for tests: generated audio and config builders (no network, no bundled data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from nestkit.config import NestConfig, config_from_dict
from nestkit.synth import noise_like, speech_like, write_manifest, write_wav


def data_config(train: str | list[str], noise: str | list[str] | None = None, **train_ds) -> NestConfig:
    """A validated config whose train_ds reads `train` (and `noise`), with overrides."""
    ds = {
        "manifest_filepath": train if isinstance(train, list) else [train],
        "noise_manifest": ([noise] if isinstance(noise, str) else noise) or [],
        "batch_size": 4,
        "num_workers": 0,
        "min_duration": None,
        "max_duration": None,
    }
    ds.update(train_ds)
    return config_from_dict({"model": {"train_ds": ds}}).config


def write_speech(path: Path, seconds: float, seed: int = 0, sample_rate: int = 16000, **kw) -> str:
    return write_wav(path, speech_like(seconds, seed, sample_rate), sample_rate, **kw)


def write_noise(path: Path, seconds: float, seed: int = 0, kind: str = "pink") -> str:
    return write_wav(path, noise_like(seconds, seed, kind), 16000)


def manifest_of(path: Path, files: list[tuple[str, float]] | list[dict]) -> str:
    entries = [f if isinstance(f, dict) else {"audio_filepath": f[0], "duration": f[1]} for f in files]
    return write_manifest(path, entries)


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def position_coded_wav(path: Path, seconds: float, sample_rate: int = 16000) -> tuple[str, np.ndarray]:
    """A float WAV whose sample i holds i * 1e-6, so any segment names its own positions."""
    samples = (np.arange(int(seconds * sample_rate)) * 1e-6).astype(np.float32)
    sf.write(str(path), samples, sample_rate, subtype="FLOAT")
    return str(path), samples
