"""Drawing a noise for an utterance: a random file, a random non-silent segment, bounded retries,
then white noise -- every choice from the caller's seeded generator and every failure recorded.

NeMo's behaviour, kept: up to 20 noise files tried, up to 100 segments of a file tried for a
non-silent one, white noise at an integer level drawn from [-90, -46) dB as the last resort.
NeMo's defects, fixed: "silent" is judged by energy (RMS in dBFS), not by `sum(samples) > 0`, which
calls most signed audio with a negative mean silent; a silent file is retried with another file
rather than replaced by white noise at once; draws never touch global random state.
A noise file proven silent once (`silent_noise.SilenceMemo`) is not read again: its segments' offsets
are still drawn, so the draw and its records are exactly those of reading it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from nestkit.core.errors import AudioLoadError, ManifestError
from nestkit.data.loading import cut_path, load_cut
from nestkit.data.manifest import CutIndex
from nestkit.data.silent_noise import SilenceMemo


@dataclass(frozen=True)
class NoiseSettings:
    sample_rate: int = 16000
    max_files: int = 20
    max_segments: int = 100
    silence_db: float = -80.0
    white_min_db: float = -90.0
    white_max_db: float = -46.0
    timeout_s: float | None = 60.0


@dataclass
class NoiseDraw:
    samples: np.ndarray  # float32, at most the requested length (shorter noise is repeated later)
    cut_id: str | None  # None for white noise or no noise
    path: str | None
    offset: float  # seconds into the noise cut
    fallback: str | None  # None, "white" (every try failed) or "none" (no noise manifest)
    white_db: int | None
    files_tried: int
    segments_tried: int
    failures: list[dict] = field(
        default_factory=list
    )  # {"row", "cut_id", "manifest", "line", "path", "category", "reason"}

    def record(self) -> dict:
        return {
            "cut_id": self.cut_id,
            "path": self.path,
            "offset": round(self.offset, 6),
            "fallback": self.fallback,
            "white_db": self.white_db,
            "files_tried": self.files_tried,
            "segments_tried": self.segments_tried,
        }


def rms_db(samples: np.ndarray) -> float:
    """Root-mean-square level in dBFS (-inf for digital silence)."""
    if samples.size == 0:
        return -math.inf
    power = float(np.dot(samples, samples)) / samples.size
    return 10 * math.log10(power) if power > 0 else -math.inf


def white_noise(num_samples: int, rng: np.random.Generator, settings: NoiseSettings) -> tuple[np.ndarray, int]:
    level_db = int(rng.integers(int(settings.white_min_db), int(settings.white_max_db)))
    samples = rng.standard_normal(num_samples).astype(np.float32) * np.float32(10.0 ** (level_db / 20.0))
    return samples, level_db


def draw_noise(
    noise: CutIndex | None,
    num_samples: int,
    rng: np.random.Generator,
    settings: NoiseSettings,
    memo: SilenceMemo | None = None,
) -> NoiseDraw:
    """A noise for an utterance of `num_samples` samples. `memo` skips reading files proven silent
    (the result is the same with or without it)."""
    if noise is None or len(noise) == 0:
        return NoiseDraw(np.zeros(0, np.float32), None, None, 0.0, "none", None, 0, 0)
    need_s = num_samples / settings.sample_rate
    failures: list[dict] = []
    segments_tried = 0
    for files_tried in range(1, settings.max_files + 1):
        row = int(rng.integers(len(noise)))
        where = {"row": row, "manifest": noise.manifests[int(noise.source[row])], "line": int(noise.line[row])}
        try:
            cut = noise.cut(row)
        except ManifestError as exc:
            failures.append({**where, "cut_id": None, "path": None, "category": "manifest", "reason": str(exc)})
            continue
        long = cut.duration > need_s
        tries = settings.max_segments if long else 1
        try:
            for attempt in range(max(tries, 1)):
                # a file proven silent (found so now, after one silent segment, or before) is not
                # read again; the offsets the remaining tries would draw are drawn all the same
                if long and memo is not None and _proven_silent(memo, cut, num_samples, settings, attempt > 0):
                    skipped = max(tries, 1) - attempt
                    rng.uniform(0.0, cut.duration - need_s, size=skipped)
                    segments_tried += skipped
                    memo.reads_skipped += skipped
                    break
                segments_tried += 1
                offset = float(rng.uniform(0.0, cut.duration - need_s)) if long else 0.0
                length = need_s if long else None
                samples = load_cut(cut, settings.sample_rate, settings.timeout_s, offset, length)[:num_samples]
                if rms_db(samples) > settings.silence_db:
                    return NoiseDraw(
                        samples, cut.id, cut_path(cut), offset, None, None, files_tried, segments_tried, failures
                    )
            failures.append(
                {
                    **where,
                    "cut_id": cut.id,
                    "path": cut_path(cut),
                    "category": "silent_noise",
                    "reason": f"noise {cut.id}: silent in {tries} segment(s) tried (expected RMS above "
                    f"{settings.silence_db:g} dBFS). Remove it from the noise manifest",
                }
            )
        except AudioLoadError as exc:
            failures.append({**where, "cut_id": cut.id, "path": exc.path, "category": exc.category, "reason": str(exc)})
    samples, level_db = white_noise(num_samples, rng, settings)
    return NoiseDraw(samples, None, None, 0.0, "white", level_db, settings.max_files, segments_tried, failures)


def _proven_silent(memo: SilenceMemo, cut, num_samples: int, settings: NoiseSettings, prove: bool) -> bool:
    return memo.proves_silent(cut, num_samples, settings.sample_rate, settings.silence_db, settings.timeout_s, prove)
