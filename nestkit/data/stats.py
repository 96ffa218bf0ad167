"""Running totals over batches: what the pipeline produced and what it had to replace."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from nestkit.data.batch import NestBatch


@dataclass
class DataStats:
    batches: int = 0
    cuts: int = 0
    audio_seconds: float = 0.0
    modes: Counter = field(default_factory=Counter)  # skip / noise / speech
    noise_fallbacks: Counter = field(default_factory=Counter)  # white / none
    substituted: int = 0
    repeats: int = 0
    failures: Counter = field(default_factory=Counter)  # (kind, category) -> count
    failed_examples: dict = field(default_factory=dict)  # (kind, category) -> first record

    def add(self, batch: NestBatch) -> None:
        self.batches += 1
        self.cuts += len(batch)
        self.audio_seconds += batch.audio_seconds
        for record in batch.records:
            aug = record["augment"]
            self.modes[aug["mode"]] += 1
            fallback = aug.get("noise", {}).get("fallback") if aug["mode"] == "noise" else None
            if fallback:
                self.noise_fallbacks[fallback] += 1
            self.substituted += record["substitute_for"] is not None
            self.repeats += bool(record.get("repeat"))
        for failure in batch.failures:
            key = (failure["kind"], failure["category"])
            self.failures[key] += 1
            self.failed_examples.setdefault(key, failure)
