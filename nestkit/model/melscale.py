"""Slaney mel filterbank, computed in float64 numpy and rounded the way NeMo's buffer is.

NeMo fills `preprocessor.featurizer.fb` with librosa's `filters.mel(norm="slaney", htk=False)`. We
write the same formula here (no librosa, no torchaudio). librosa builds the triangles in float64,
stores them in a float32 array, then multiplies that float32 array in place by the float64 area
normalisation, which rounds a second time; we round at the same two places so the buffer is equal
bit for bit, not just close.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# Slaney's auditory toolbox scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above it,
# with 27 mel steps per factor 6.4 in frequency.
_LINEAR_HZ_PER_MEL = 200.0 / 3.0
_LOG_START_HZ = 1000.0
_LOG_START_MEL = _LOG_START_HZ / _LINEAR_HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: npt.ArrayLike) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _LINEAR_HZ_PER_MEL
    above = hz >= _LOG_START_HZ
    mel = np.where(above, _LOG_START_MEL + np.log(np.maximum(hz, _LOG_START_HZ) / _LOG_START_HZ) / _LOG_STEP, mel)
    return mel


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = _LINEAR_HZ_PER_MEL * mel
    above = mel >= _LOG_START_MEL
    return np.where(above, _LOG_START_HZ * np.exp(_LOG_STEP * (mel - _LOG_START_MEL)), hz)


def slaney_mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    norm: str | None = "slaney",
) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 triangular filters, area-normalised when norm="slaney"."""
    if norm not in (None, "slaney"):
        raise ValueError(f"mel filterbank norm: unsupported (expected 'slaney' or None, got {norm!r})")
    f_max = sample_rate / 2.0 if f_max is None else float(f_max)
    fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    widths = np.diff(edges_hz)
    distance = np.subtract.outer(edges_hz, fft_hz)  # (n_mels + 2, n_bins)
    rising = -distance[:-2] / widths[:-1, None]
    falling = distance[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    if norm == "slaney":
        area = 2.0 / (edges_hz[2:] - edges_hz[:-2])
        weights = (weights.astype(np.float64) * area[:, None]).astype(np.float32)
    return weights
