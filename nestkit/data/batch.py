"""The batch the NEST dataset produces and the trainer consumes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class BatchPosition:
    """Where a batch sits in the plan. batch = -1 for a CutSet that did not come from a plan."""

    epoch: int
    rank: int
    batch: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class NestBatch:
    audio: torch.Tensor  # (B, T) float32, clean, zero padded
    audio_len: torch.Tensor  # (B,) int64 samples
    noise: torch.Tensor  # (B, T) float32, what was added (zero for utterances left clean)
    noise_len: torch.Tensor  # (B,) int64
    noisy_audio: torch.Tensor  # (B, T) float32 = audio + noise
    noisy_audio_len: torch.Tensor  # (B,) int64
    cut_ids: list[str]  # the cuts in the batch, substitutes included
    records: list[dict]  # per utterance: source, substitution, noise draw, augmentation decisions
    failures: list[dict]  # quarantine records written while building this batch
    position: BatchPosition
    fingerprint: str
    load_ms: list[float] = field(default_factory=list)  # per utterance, for replay's timing table

    _TENSORS = ("audio", "audio_len", "noise", "noise_len", "noisy_audio", "noisy_audio_len")

    def __len__(self) -> int:
        return len(self.cut_ids)

    @property
    def audio_seconds(self) -> float:
        return float(self.audio_len.sum()) / self.sample_rate if self.sample_rate else 0.0

    sample_rate: int = 16000

    def _map(self, fn) -> "NestBatch":
        return dataclasses.replace(self, **{name: fn(getattr(self, name)) for name in self._TENSORS})

    def pin_memory(self) -> "NestBatch":
        """Called by the DataLoader when pin_memory=True."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str) -> "NestBatch":
        return self._map(lambda t: t.to(device, non_blocking=True))
