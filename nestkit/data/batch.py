"""The batch the NEST dataset produces and the trainer consumes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

PLAN_KEY = "plan"  # cut.custom[PLAN_KEY]: the cut's place in the plan (see BatchPosition)


@dataclass(frozen=True)
class BatchPosition:
    """Where a micro-batch sits in the plan.

    `batch` is the rank's batch number in the epoch (what its log, Lightning's progress and
    `lookup --batch N --rank R` say); `index` is the micro-batch's index in the epoch's sequence,
    the same whichever rank or world size trains it (rank r of W takes r, r + W, r + 2W, ...; a
    piece of the epoch's split last step has an index past the sequence's end). Randomness is keyed
    by `index`. batch = index = -1 for a CutSet that did not come from a plan.
    """

    epoch: int
    rank: int
    batch: int
    index: int = -1
    world_size: int = 1
    consumed_after: int | None = None  # the epoch's micro-batches consumed once this step is done

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class NestBatch:
    """One batch. The added noise is stored as spans, (row, start, length) into `noise_values`:
    it is zero outside the mixed segments and for utterances left clean (about 75% of it with the
    default augmentor), so workers hand over far less memory. `noise` and `noisy_audio` are built
    from the spans wherever the batch is (on the GPU in training)."""

    audio: torch.Tensor  # (B, T) float32, clean, zero padded
    audio_len: torch.Tensor  # (B,) int64 samples
    noise_values: torch.Tensor  # (sum of span lengths,) float32
    noise_spans: list[tuple[int, int, int]]  # (row, start sample, length) into noise_values
    cut_ids: list[str]  # the cuts in the batch, substitutes included
    records: list[dict]  # per utterance: source, substitution, noise draw, augmentation decisions
    failures: list[dict]  # quarantine records written while building this batch
    position: BatchPosition
    fingerprint: str
    load_ms: list[float] = field(default_factory=list)  # per utterance, for replay's timing table

    _TENSORS = ("audio", "audio_len", "noise_values")

    def __len__(self) -> int:
        return len(self.cut_ids)

    def _add_spans(self, out: torch.Tensor) -> torch.Tensor:
        at = 0
        for row, start, length in self.noise_spans:
            out[row, start : start + length] += self.noise_values[at : at + length]
            at += length
        return out

    @property
    def noise(self) -> torch.Tensor:
        """(B, T) float32: what was added to each utterance (zero where nothing was)."""
        return self._add_spans(torch.zeros_like(self.audio))

    @property
    def noisy_audio(self) -> torch.Tensor:
        """(B, T) float32: audio + noise."""
        return self._add_spans(self.audio.clone())

    @property
    def noisy_audio_len(self) -> torch.Tensor:
        return self.audio_len

    @property
    def audio_seconds(self) -> float:
        return float(self.audio_len.sum()) / self.sample_rate if self.sample_rate else 0.0

    sample_rate: int = 16000

    def _map(self, fn) -> NestBatch:
        return dataclasses.replace(self, **{name: fn(getattr(self, name)) for name in self._TENSORS})

    def pin_memory(self) -> NestBatch:
        """Called by the DataLoader when pin_memory=True."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str) -> NestBatch:
        return self._map(lambda t: t.to(device, non_blocking=True))
