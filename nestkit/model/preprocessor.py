"""Log-mel features with the semantics of NeMo's `AudioToMelSpectrogramPreprocessor`.

Order of operations (each one matters for parity): dither (training only) -> pre-emphasis, then
zero beyond the length -> STFT (centred, zero padded; or NeMo's `exact_pad`) -> magnitude -> power
-> mel filterbank -> log(x + guard) -> per-feature normalisation over the valid frames -> pad_value
beyond the length -> pad the frame count to a multiple of `pad_to`.

`MelPreprocessor.forward_pair` runs clean and noisy audio through one call (concatenated along the
batch), which is what the NEST forward needs twice per step.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nestkit.config import PreprocessorConfig
from nestkit.model.melscale import slaney_mel_filterbank
from nestkit.model.precision import full_precision

# NeMo's `CONSTANT`: added to the per-feature standard deviation so that silent features do not divide by 0.
NORMALIZE_STD_EPSILON = 1e-5

_WINDOWS = {
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
    "blackman": torch.blackman_window,
    "bartlett": torch.bartlett_window,
}


class MelFeaturizer(nn.Module):
    """Holds NeMo's two buffers (`window`, `fb`) and computes the features."""

    window: Optional[torch.Tensor]  # (win_length,); None for a rectangular window
    fb: torch.Tensor  # (1, features, n_fft // 2 + 1) mel filterbank

    def __init__(self, cfg: PreprocessorConfig):
        super().__init__()
        sample_rate = cfg.sample_rate
        if sample_rate is None:
            raise ValueError(
                "preprocessor.sample_rate: not set (expected Hz, got None). Build the config with config_from_dict"
            )
        self.win_length = cfg.n_window_size or _samples(cfg.window_size, sample_rate, "window_size", "n_window_size")
        self.hop_length = cfg.n_window_stride or _samples(
            cfg.window_stride, sample_rate, "window_stride", "n_window_stride"
        )
        self.n_fft = cfg.n_fft or 2 ** math.ceil(math.log2(self.win_length))
        if self.n_fft < self.win_length:
            raise ValueError(
                f"preprocessor.n_fft: shorter than the window (expected at least {self.win_length} samples, "
                f"window_size x sample_rate or n_window_size; got {self.n_fft})"
            )
        if cfg.exact_pad and self.hop_length % 2:
            raise ValueError(
                f"preprocessor.exact_pad: needs an even hop (expected an even number of samples, got {self.hop_length})"
            )
        # exact_pad: no centring; pad so that the frame count is length // hop (NeMo's formula)
        self.exact_pad_samples = (self.n_fft - self.hop_length) // 2 if cfg.exact_pad else None
        self.cfg = cfg
        window_fn = _WINDOWS.get(cfg.window)
        # NeMo registers no window buffer for "none"/"ones" (its STFT then fails); a missing window
        # here means a rectangular one, as torch.stft defines it.
        window = window_fn(self.win_length, periodic=False) if window_fn else None
        self.register_buffer("window", window)
        fb = slaney_mel_filterbank(sample_rate, self.n_fft, cfg.features, cfg.lowfreq, cfg.highfreq, norm=cfg.mel_norm)
        self.register_buffer("fb", torch.from_numpy(fb).unsqueeze(0))

    def frame_count(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Valid feature frames for `num_samples` (NeMo's get_seq_len; 0 samples give 0 frames)."""
        padding = 2 * self.exact_pad_samples if self.exact_pad_samples is not None else self.n_fft // 2 * 2
        frames = torch.floor_divide(num_samples + padding - self.n_fft, self.hop_length).long()
        return torch.where(num_samples == 0, torch.zeros_like(frames), frames)

    def _log_guard(self, dtype: torch.dtype) -> float:
        if self.cfg.log_zero_guard_value == "tiny":
            return torch.finfo(dtype).tiny
        if self.cfg.log_zero_guard_value == "eps":
            return torch.finfo(dtype).eps
        if isinstance(self.cfg.log_zero_guard_value, str):
            raise ValueError(
                f"preprocessor.log_zero_guard_value: unknown name (expected a number, 'tiny' or 'eps', got {self.cfg.log_zero_guard_value!r})"
            )
        return float(self.cfg.log_zero_guard_value)

    def forward(
        self,
        audio: torch.Tensor,
        lengths: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        dither_rows: Optional[tuple[int, ...]] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`dither_rows`: row counts of the batches stacked in `audio`, whose dither is drawn one
        batch at a time (default: one batch). Always float32, autocast or not (targets come from it)."""
        with full_precision(audio.device):
            return self._features(audio, lengths, generator, dither_rows)

    def _features(
        self,
        audio: torch.Tensor,
        lengths: torch.Tensor,
        generator: Optional[torch.Generator],
        dither_rows: Optional[tuple[int, ...]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        frames = self.frame_count(lengths)
        x = audio.float()
        if self.exact_pad_samples is not None:
            x = F.pad(x, (self.exact_pad_samples, self.exact_pad_samples))
        if self.training and self.cfg.dither > 0:
            x = x + self.cfg.dither * _dither_noise(x, generator, dither_rows or (x.shape[0],))
        if self.cfg.preemph is not None:
            x = torch.cat((x[:, :1], x[:, 1:] - self.cfg.preemph * x[:, :-1]), dim=1)
            beyond = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
            x = x.masked_fill(beyond, 0.0)
        window = self.window.to(dtype=torch.float, device=x.device) if self.window is not None else None
        spec = torch.stft(
            x,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            center=self.exact_pad_samples is None,
            window=window,
            return_complex=True,
            pad_mode="constant",
        )
        # magnitude first, then the power, as NeMo does (keeps features equal to the last bit)
        x = torch.view_as_real(spec).pow(2).sum(-1).sqrt()
        if self.cfg.mag_power != 1.0:
            x = x.pow(self.cfg.mag_power)
        x = torch.matmul(self.fb.to(x.dtype), x)
        if self.cfg.log:
            guard = self._log_guard(x.dtype)
            x = torch.log(x + guard) if self.cfg.log_zero_guard_type == "add" else torch.log(torch.clamp(x, min=guard))
        x = normalize_features(x, frames, self.cfg.normalize)
        beyond = torch.arange(x.shape[-1], device=x.device)[None, :] >= frames[:, None]
        x = x.masked_fill(beyond[:, None, :], self.cfg.pad_value)
        if self.cfg.pad_to > 0 and x.shape[-1] % self.cfg.pad_to:
            x = F.pad(x, (0, self.cfg.pad_to - x.shape[-1] % self.cfg.pad_to), value=self.cfg.pad_value)
        return x, frames


def _samples(seconds: Optional[float], sample_rate: int, name: str, samples_name: str) -> int:
    """A window length or stride given in seconds, in samples (truncated, as NeMo does)."""
    if seconds is None:
        raise ValueError(f"preprocessor.{name}: required when {samples_name} is not set (expected seconds, got None)")
    return int(seconds * sample_rate)


def normalize_features(x: torch.Tensor, frames: torch.Tensor, mode: Optional[str]) -> torch.Tensor:
    """NeMo's normalize_batch: statistics over the valid frames of each utterance only."""
    if mode in (None, "none"):
        return x
    valid = (torch.arange(x.shape[-1], device=x.device)[None, :] < frames[:, None])[:, None, :]
    count = valid.sum(dim=-1)  # (B, 1)
    if mode == "per_feature":
        mean = torch.where(valid, x, 0.0).sum(dim=2) / count
        centred_sq = torch.where(valid, x - mean.unsqueeze(2), 0.0) ** 2
        std = torch.sqrt(centred_sq.sum(dim=2) / (count - 1.0))
        std = std.masked_fill(std.isnan(), 0.0) + NORMALIZE_STD_EPSILON  # one frame: no spread
        return (x - mean.unsqueeze(2)) / std.unsqueeze(2)
    if mode == "all_features":
        n = count.squeeze(1) * x.shape[1]
        mean = torch.where(valid, x, 0.0).sum(dim=(1, 2)) / n
        var = (torch.where(valid, x - mean[:, None, None], 0.0) ** 2).sum(dim=(1, 2)) / (n - 1.0)
        std = var.sqrt() + NORMALIZE_STD_EPSILON
        return (x - mean[:, None, None]) / std[:, None, None]
    raise ValueError(f"preprocessor.normalize: unknown mode (expected per_feature, all_features or none, got {mode!r})")


def _dither_noise(x: torch.Tensor, generator: Optional[torch.Generator], rows: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise like (B, T) `x`, drawn in one randn call per batch of `rows` rows.

    NeMo preprocesses the clean and the noisy batch in two calls, each drawing randn_like from the
    global RNG; one randn over both is not the same stream (torch's normal sampler redraws the last
    16 values when a call's size is not a multiple of 16), and the masks drawn next would differ.
    """
    if generator is None:
        raise ValueError(
            "preprocessor dither: no generator (expected a torch.Generator in training, got None). "
            "Pass generator=nestkit.core.rng.torch_generator(seed, 'model', step) to the forward"
        )
    noise = [torch.randn((n, x.shape[1]), generator=generator, device=generator.device, dtype=x.dtype) for n in rows]
    return torch.cat(noise).to(x.device)


class MelPreprocessor(nn.Module):
    """`preprocessor` in NeMo's key layout (`preprocessor.featurizer.{window,fb}`); never trained."""

    def __init__(self, cfg: PreprocessorConfig):
        super().__init__()
        self.featurizer = MelFeaturizer(cfg)

    @torch.no_grad()
    def forward(
        self, audio: torch.Tensor, lengths: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) audio and (B,) sample counts -> (B, F, frames) features and (B,) frame counts."""
        return self.featurizer(audio, lengths, generator)

    @torch.no_grad()
    def forward_pair(
        self,
        audio: torch.Tensor,
        lengths: torch.Tensor,
        other_audio: torch.Tensor,
        other_lengths: torch.Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both batches in one call (concatenated along the batch) when they have the same width, as
        NEST's clean and noisy audio do; otherwise two calls, so that each result is bit for bit
        what it would be on its own (a wider STFT can round differently and flip a token). Dither
        is drawn for `audio` first, then for `other_audio`, as two calls would (and NeMo does)."""
        if audio.shape[1] != other_audio.shape[1]:
            return (
                *self.featurizer(audio, lengths, generator),
                *self.featurizer(other_audio, other_lengths, generator),
            )
        batch = audio.shape[0]
        feats, frames = self.featurizer(
            torch.cat((audio, other_audio)),
            torch.cat((lengths, other_lengths)),
            generator,
            (batch, other_audio.shape[0]),
        )
        return feats[:batch], frames[:batch], feats[batch:], frames[batch:]
