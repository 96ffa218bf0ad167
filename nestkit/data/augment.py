"""NeMo's MultiSpeakerNoiseAugmentation, vectorised and seeded per utterance.

For each utterance, with probability `prob`, a fraction `mix_rate` of it is overlaid with
`num_segments` segments taken either from a noise (probability `noise_ratio`) or from up to
`num_speakers` other utterances of the batch, scaled so that the speech-to-overlay energy ratio
(both measured over the utterance's length) equals a ratio drawn in dB. The decisions are NeMo's;
the differences are deliberate:

* every draw comes from the utterance's own generator (seeded by position), not global `random`;
* the noise is fetched only for utterances that mix noise, and only the `mix_len` samples used
  (NeMo loads a full-length noise for every utterance and uses at most half of it for a quarter
  of them); it is still one random segment of one random file, repeated if the file is shorter;
* segment lengths are one multinomial draw instead of `random.choices(..., k=mix_len)` (NeMo's hot
  spot; same distribution), and empty segments are dropped instead of crashing;
* an utterance the augmentor skips gets no noise at all (NeMo adds the raw, unscaled noise to it);
* energies are BLAS dot products per row; no Python loop touches individual samples, and only the
  rows that mix get an overlay (a skipped row costs no memory).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from nestkit.config import AugmentorConfig

# noise_source(row, num_samples) -> (samples, record): at most num_samples samples of a noise
NoiseSource = Callable[[int, int], tuple[np.ndarray, dict]]


def _draw_row(
    i: int,
    rows: list[np.ndarray],
    noise_source: NoiseSource,
    rng: np.random.Generator,
    cfg: AugmentorConfig,
    cut_ids: list[str],
) -> tuple[dict, np.ndarray | None]:
    """Decide row i's overlay; return its record and the unscaled overlay (None: skipped)."""
    batch_size = len(rows)
    length = rows[i].size
    if rng.random() >= cfg.prob:
        return {"mode": "skip"}, None
    mix_rate = (
        rng.uniform(cfg.min_mix_rate, cfg.max_mix_rate) if cfg.min_mix_rate < cfg.max_mix_rate else cfg.min_mix_rate
    )
    mix_len = max(1, int(length * mix_rate))
    num_segments = int(rng.integers(cfg.min_num_segments, cfg.max_num_segments + 1))
    num_speakers = min(int(rng.integers(cfg.min_num_speakers, cfg.max_num_speakers + 1)), batch_size)
    seg_lens = rng.multinomial(mix_len, np.full(num_segments, 1.0 / num_segments))
    seg_lens = seg_lens[seg_lens > 0]
    if rng.random() < cfg.noise_ratio or batch_size == 1:
        mode, ratio_db = "noise", float(rng.uniform(cfg.min_r_noise, cfg.max_r_noise))
        noise, noise_record = noise_source(i, mix_len)
        # the noise repeated as needed, cut into consecutive segments from its start
        source = np.resize(noise, mix_len) if noise.size else np.zeros(mix_len, np.float32)
        starts_in_source = np.concatenate(([0], np.cumsum(seg_lens)[:-1]))
        clips = [source[a : a + n] for a, n in zip(starts_in_source, seg_lens)]
        speakers: list[str] = []
    else:
        mode, ratio_db = "speech", float(rng.uniform(cfg.min_r_speech, cfg.max_r_speech))
        others = np.array([j for j in range(batch_size) if j != i])
        chosen = rng.choice(others, size=min(num_speakers, batch_size - 1), replace=False)
        clips, speakers, k = [], [], 0
        for n in seg_lens:
            j = int(chosen[k])
            other = rows[j]
            if n > other.size:
                clips.append(np.resize(other, n))
            else:
                start = int(rng.integers(0, other.size - n)) if other.size > n else 0
                clips.append(other[start : start + n])
            speakers.append(cut_ids[j])
            k += 1
            if k >= len(chosen):
                k = int(rng.integers(0, len(chosen)))
    # place the segments in order, each at a random start that leaves room for the rest
    out = np.zeros(length, np.float32)
    segments = []
    min_start, max_start = 0, length - mix_len
    for clip in clips:
        start = int(rng.integers(min_start, max_start)) if min_start < max_start else min_start
        out[start : start + len(clip)] = clip
        segments.append([start, len(clip)])
        min_start = start + len(clip)
        max_start += len(clip)
    record = {"mode": mode, "energy_ratio_db": ratio_db, "mix_len": mix_len, "segments": segments}
    if mode == "noise":
        record["noise"] = noise_record
    else:
        record["speakers"] = speakers
    return record, out


def augment_batch(
    rows: list[np.ndarray],
    rngs: list[np.random.Generator],
    cfg: AugmentorConfig | None,
    cut_ids: list[str],
    noise_source: NoiseSource,
) -> tuple[list[np.ndarray | None], list[dict]]:
    """The overlay to add to each utterance (`rows`: their samples) and one record per row.

    An overlay is as long as its utterance, zero outside its segments; None for a skipped row.
    """
    if cfg is None:
        return [None] * len(rows), [{"mode": "skip"} for _ in rows]
    drawn = [_draw_row(i, rows, noise_source, rngs[i], cfg, cut_ids) for i in range(len(rows))]
    for (record, mix), speech in zip(drawn, rows):
        if mix is None:
            continue
        length = max(speech.size, 1)
        speech_energy = float(np.dot(speech, speech)) / length
        overlay_energy = float(np.dot(mix, mix)) / length
        if overlay_energy > 0:
            scale = math.sqrt(speech_energy / (10.0 ** (record["energy_ratio_db"] / 10.0) * overlay_energy))
        else:
            scale = 0.0
            record["note"] = "overlay is silent: nothing added"
        mix *= np.float32(scale)
        record["scale"] = scale
    return [mix for _, mix in drawn], [record for record, _ in drawn]


def achieved_ratio_db(audio: np.ndarray, overlay: np.ndarray, length: int) -> float:
    """Speech-to-overlay energy ratio actually obtained for one utterance (dB)."""
    e_speech = float(np.dot(audio[:length].astype(np.float64), audio[:length]))
    e_overlay = float(np.dot(overlay[:length].astype(np.float64), overlay[:length]))
    return 10 * math.log10(e_speech / e_overlay) if e_overlay > 0 else math.inf
