"""Deterministic synthetic audio for the demo corpus, the tests and the benchmarks.

Nothing is downloaded: "speech" is a harmonic source with a gliding pitch, syllable-rate amplitude
modulation and a few formant resonances; "noise" is coloured noise, hum or babble-like mixtures.
Everything is a pure function of its seed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000  # Hz


def speech_like(seconds: float, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sample_rate)))
    t = np.arange(n) / sample_rate
    f0 = rng.uniform(90, 240) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 0.7) * t + rng.uniform(0, 6.3)))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6.3))) ** 2
    signal = harmonics * syllables
    # a crude formant colouring: a few damped resonators applied in the frequency domain
    spectrum = np.fft.rfft(signal)
    freqs = np.fft.rfftfreq(n, 1 / sample_rate)
    gain = np.zeros_like(freqs)
    for centre, width in ((rng.uniform(400, 900), 120), (rng.uniform(1000, 2200), 200), (rng.uniform(2400, 3200), 300)):
        gain += 1.0 / (1.0 + ((freqs - centre) / width) ** 2)
    signal = np.fft.irfft(spectrum * (0.1 + gain), n)
    signal += 0.003 * rng.standard_normal(n)
    return (0.3 * signal / (np.max(np.abs(signal)) + 1e-9)).astype(np.float32)


def noise_like(seconds: float, seed: int, kind: str = "pink", sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sample_rate)))
    if kind == "white":
        signal = rng.standard_normal(n)
    elif kind in ("pink", "brown"):
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.maximum(np.fft.rfftfreq(n, 1 / sample_rate), 1.0)
        signal = np.fft.irfft(spectrum / (freqs ** (0.5 if kind == "pink" else 1.0)), n)
    elif kind == "hum":
        t = np.arange(n) / sample_rate
        signal = sum(np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 6))
        signal += 0.05 * rng.standard_normal(n)
    elif kind == "babble":
        signal = sum(speech_like(seconds, seed * 31 + k, sample_rate) for k in range(4))
    else:
        raise ValueError(f"noise kind {kind!r}: unknown (expected white, pink, brown, hum or babble)")
    signal = np.asarray(signal, dtype=np.float64)
    return (0.2 * signal / (np.max(np.abs(signal)) + 1e-9)).astype(np.float32)


def write_wav(
    path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16"
) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, sample_rate, subtype=subtype)
    return str(path)


def write_manifest(path: str | os.PathLike, entries: list[dict]) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for entry in entries:
            f.write(json.dumps(entry) + "\n")
    return str(path)


def make_corpus(
    folder: str | os.PathLike,
    num_utterances: int = 48,
    num_noises: int = 6,
    min_seconds: float = 1.5,
    max_seconds: float = 6.0,
    seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
) -> dict[str, str]:
    """Write speech-like utterances, noises and NeMo manifests (relative paths) under `folder`.

    Returns the manifest paths: {"train": ..., "validation": ..., "noise": ...}.
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(num_utterances):
        seconds = round(float(rng.uniform(min_seconds, max_seconds)), 2)
        rel = f"audio/utt{i:04d}.wav"
        write_wav(folder / rel, speech_like(seconds, seed * 100003 + i, sample_rate), sample_rate)
        entries.append({"audio_filepath": rel, "duration": seconds, "text": ""})
    kinds = ["pink", "brown", "hum", "babble", "white"]
    noise_entries = []
    for i in range(num_noises):
        seconds = round(float(rng.uniform(4.0, 12.0)), 2)
        rel = f"noise/noise{i:03d}.wav"
        write_wav(folder / rel, noise_like(seconds, seed * 7919 + i, kinds[i % len(kinds)], sample_rate), sample_rate)
        noise_entries.append({"audio_filepath": rel, "duration": seconds})
    n_val = max(1, num_utterances // 8)
    return {
        "train": write_manifest(folder / "train.json", entries[n_val:]),
        "validation": write_manifest(folder / "validation.json", entries[:n_val]),
        "noise": write_manifest(folder / "noise.json", noise_entries),
    }
