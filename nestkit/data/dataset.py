"""The NEST dataset: a map-style lhotse dataset, `dataset[cuts] -> NestBatch`.

The sampler decides (which cuts, in which batch), the dataset loads: audio (mono, 16 kHz), padding
to `min_audio_len_secs`, one noise per utterance, the batch augmentation, the fingerprint. Every
random choice comes from a generator keyed by (seed, split, purpose, epoch, batch, cut id), read from
the plan position the sampler stores in each cut (`cut.custom["plan"]`), so a batch is the same with
0, 1 or 4 workers and in a fresh process.

A cut that cannot be loaded never crashes the run and never shrinks the batch: it is replaced by a
deterministic substitute drawn from the plan's cuts, recorded in the rank's quarantine file and in
the batch, and warned about by name.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from lhotse import CutSet
from lhotse.cut import Cut

from nestkit.config import DatasetConfig
from nestkit.core.errors import AudioLoadError, ManifestError, NestkitError
from nestkit.core.rng import generator
from nestkit.data.augment import augment_batch
from nestkit.data.batch import PLAN_KEY, BatchPosition, NestBatch
from nestkit.data.fingerprint import batch_fingerprint, rows_checksum
from nestkit.data.loading import cut_path, file_segment, load_cut
from nestkit.data.manifest import CutIndex
from nestkit.data.noise import NoiseSettings, draw_noise
from nestkit.data.plan import BatchingConfig
from nestkit.data.silent_noise import SilenceMemo
from nestkit.runfolder import worker_status
from nestkit.runfolder.quarantine import Quarantine


def batch_position(cuts: list[Cut]) -> BatchPosition:
    plan = (cuts[0].custom or {}).get(PLAN_KEY) if cuts else None
    if plan:
        return BatchPosition(
            int(plan["epoch"]),
            int(plan["rank"]),
            int(plan["batch"]),
            int(plan.get("index", plan["batch"])),
            int(plan.get("world_size", 1)),
            plan.get("consumed_after"),
        )
    return BatchPosition(0, 0, -1, -1)


EXCLUDED = "excluded"  # the category (and quarantine kind) of a cut listed in nestkit.exclude_cuts
_MAX_DRAWS_FOR_UNTRIED = 100  # a pool of nothing but failed cuts must not loop forever
_MAX_SUBSTITUTE_DRAWS = 10_000  # rejection draws among the index's rows before falling back to the batch


def _untried(candidates, tried: set[str]) -> Cut | None:
    """The next candidate that has not failed for this slot yet, or None if none turns up."""
    for _ in range(_MAX_DRAWS_FOR_UNTRIED):
        cut = next(candidates)
        if cut.id not in tried:
            return cut
    return None


def _adhoc_key(cuts: list[Cut]) -> str:
    """Seed material for a CutSet that did not come from a plan: its cut ids."""
    return hashlib.blake2b("\n".join(c.id for c in cuts).encode(), digest_size=8).hexdigest()


def pad_to_min_length(samples: np.ndarray, min_len: int, mode: str) -> np.ndarray:
    """NeMo's pad_audio: repeat the audio (or zero pad) up to `min_len` samples."""
    if samples.size >= min_len:
        return samples
    if mode == "repeat" and samples.size > 0:
        return np.resize(samples, min_len)
    return np.pad(samples, (0, min_len - samples.size))


@dataclass
class _Loaded:
    samples: np.ndarray
    cut: Cut
    record: dict
    failures: list[dict]
    load_ms: float


class NestDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        ds: DatasetConfig,
        seed: int,
        index: CutIndex | None = None,
        noise: CutIndex | None = None,
        quarantine: Quarantine | None = None,
        split: str = "train",
        excluded: frozenset[str] = frozenset(),
        excluded_from: str | None = None,
    ):
        self.ds = ds
        self.excluded = excluded  # nestkit.exclude_cuts: substituted like unloadable cuts
        self.excluded_from = excluded_from
        self.seed = seed
        self.index = index
        self.noise = noise
        self.quarantine = quarantine or Quarantine(None, 0, split)
        self.split = split
        self.sample_rate = int(ds.sample_rate or 16000)
        self.noise_settings = NoiseSettings(
            sample_rate=self.sample_rate,
            max_files=ds.noise_max_files,
            max_segments=ds.noise_max_segments,
            silence_db=ds.noise_silence_db,
            white_min_db=ds.white_noise_min_db,
            white_max_db=ds.white_noise_max_db,
            timeout_s=ds.sample_timeout_s or None,
        )
        # noise files proven silent are not read again (per process; batches are the same without it)
        self.silence_memo: SilenceMemo | None = SilenceMemo()
        # substitutes come from the cuts the plan may use; drawn by rejection, not from a list of
        # kept rows, which would cost every rank 8 bytes per cut (80 MB at 10M cuts)
        self.batching = BatchingConfig.from_dataset(ds)

    def _key(self, purpose: str, position: BatchPosition, batch_key: str, cut_id: str) -> np.random.Generator:
        return generator(self.seed, self.split, purpose, position.epoch, batch_key, cut_id)

    def _quarantine(self, record: dict, position: BatchPosition) -> dict:
        return self.quarantine.write(
            {"epoch": position.epoch, "batch": position.batch, "index": position.index, "split": self.split, **record}
        )

    def _substitute_candidates(self, rng: np.random.Generator, batch: list[Cut]):
        if self.index is not None and len(self.index):
            low, high = self.batching.min_duration, self.batching.max_duration
            for _ in range(_MAX_SUBSTITUTE_DRAWS):
                row = int(rng.integers(len(self.index)))
                duration = float(self.index.duration[row])
                if (low is not None and duration < low) or (high is not None and duration > high):
                    continue  # the plan never uses it
                try:
                    yield self.index.cut(row)
                except ManifestError:
                    continue
        while True:  # an index with (almost) nothing the plan may use: substitutes from the batch
            yield batch[int(rng.integers(len(batch)))]

    def load_utterance(self, cut: Cut, position: BatchPosition, batch_key: str, batch: list[Cut]) -> _Loaded:
        """The cut's samples, or a substitute's, with what happened on the way."""
        failures: list[dict] = []
        candidates = None
        tried: set[str] = set()
        current = cut
        started = time.perf_counter()
        for attempt in range(self.ds.max_substitutes + 1):
            attempt_started = time.perf_counter()
            try:
                if current.id in self.excluded:
                    raise AudioLoadError(
                        EXCLUDED, cut_path(current), f"listed in nestkit.exclude_cuts ({self.excluded_from})"
                    )
                samples = load_cut(current, self.sample_rate, self.ds.sample_timeout_s or None, require_signal=True)
            except AudioLoadError as exc:
                custom = current.custom or {}
                if candidates is None:
                    candidates = self._substitute_candidates(
                        self._key("substitute", position, batch_key, cut.id), batch
                    )
                tried.add(current.id)
                replacement = _untried(candidates, tried) if attempt < self.ds.max_substitutes else None
                failures.append(
                    self._quarantine(
                        {
                            "kind": EXCLUDED if exc.category == EXCLUDED else "audio",
                            "cut_id": current.id,
                            "manifest": custom.get("manifest"),
                            "line": custom.get("line"),
                            "path": exc.path,
                            "category": exc.category,
                            "reason": str(exc),
                            "substitute": replacement.id if replacement is not None else None,
                            "elapsed_ms": round((time.perf_counter() - attempt_started) * 1e3, 3),
                        },
                        position,
                    )
                )
                if replacement is None:
                    break
                current = replacement
                continue
            custom = current.custom or {}
            segment = file_segment(current)
            record = {
                "cut_id": current.id,
                "manifest": custom.get("manifest"),
                "line": custom.get("line"),
                "path": segment.path if segment else cut_path(current),
                "offset": segment.offset if segment else current.start,
                "duration": current.duration,
                "substitute_for": cut.id if current is not cut else None,
                "repeat": bool((cut.custom or {}).get(PLAN_KEY, {}).get("repeat", False)),
            }
            return _Loaded(samples, current, record, failures, (time.perf_counter() - started) * 1e3)
        substitutes = len(failures) - 1
        why = (
            "no other loadable cut to substitute"
            if substitutes < self.ds.max_substitutes
            else "the data is mostly unreadable"
        )
        raise NestkitError(
            f"cut {cut.id}: it and {substitutes} substitute(s) failed to load (last: {failures[-1]['reason']}); "
            f"{why}. Run `nestkit validate-manifest` on the manifests and see the quarantine file"
        )

    def _noise_source(self, position: BatchPosition, batch_key: str, cut_ids: list[str], failures: list[dict]):
        """The augmentor's noise callback: a seeded draw per utterance, failures quarantined."""

        def source(row: int, num_samples: int) -> tuple[np.ndarray, dict]:
            rng = self._key("noise", position, batch_key, cut_ids[row])
            draw = draw_noise(self.noise, num_samples, rng, self.noise_settings, self.silence_memo)
            for failure in draw.failures:
                failures.append(self._quarantine({"kind": "noise", "for_cut": cut_ids[row], **failure}, position))
            return draw.samples, draw.record()

        return source

    def __getitem__(self, cuts: CutSet) -> NestBatch:
        cuts = list(cuts)
        if not cuts:
            raise NestkitError("batch: empty CutSet (expected at least one cut)")
        position = batch_position(cuts)
        # the micro-batch's index in the epoch, not the rank's batch number: the same draws on any world size
        batch_key = str(position.index) if position.index >= 0 else _adhoc_key(cuts)
        min_len = int(round(self.ds.min_audio_len_secs * self.sample_rate))

        worker_status.begin_batch(position.epoch, position.batch)  # for stall reports; ~1 us
        loaded = [self.load_utterance(cut, position, batch_key, cuts) for cut in cuts]
        worker_status.set_context("augmenting")
        rows = [pad_to_min_length(item.samples, min_len, self.ds.pad_audio_mode) for item in loaded]
        audio_checksum = rows_checksum(rows)
        cut_ids = [item.cut.id for item in loaded]
        failures = [f for item in loaded for f in item.failures]

        aug_rngs = [self._key("augment", position, batch_key, cid) for cid in cut_ids]
        noise_source = self._noise_source(position, batch_key, cut_ids, failures)
        overlays, aug_records = augment_batch(rows, aug_rngs, self.ds.batch_augmentor, cut_ids, noise_source)
        overlay_checksum = rows_checksum(overlays)
        spans = _spans(aug_records)

        # the batch is written once, straight into the block that ships it
        shape = (len(rows), max(r.size for r in rows))
        audio_t, values_t, lengths_t = _shared_tensors(shape[0] * shape[1], sum(n for _, _, n in spans), len(rows))
        audio_t = audio_t.view(shape)
        audio = audio_t.numpy()
        for i, samples in enumerate(rows):
            audio[i, : samples.size] = samples
            audio[i, samples.size :] = 0.0
        lengths_t.numpy()[:] = [r.size for r in rows]
        values = values_t.numpy()
        at = 0
        for row, start, n in spans:
            overlay = overlays[row]
            if overlay is None:  # _spans keeps only rows the augmentor scaled an overlay for
                raise RuntimeError(f"batch {batch_key}: row {row} has a noise span but no overlay (augment_batch)")
            values[at : at + n] = overlay[start : start + n]
            at += n

        records = []
        for item, samples, aug in zip(loaded, rows, aug_records):
            record = dict(item.record)
            record["padded_to"] = int(samples.size) if samples.size != item.samples.size else None
            record["augment"] = aug
            records.append(record)

        checksums: dict[str, str | list[int]] = {
            "audio": audio_checksum,
            "noise": overlay_checksum,
            "shape": list(shape),
        }
        worker_status.end_batch()
        return NestBatch(
            audio=audio_t,
            audio_len=lengths_t,
            noise_values=values_t,
            noise_spans=spans,
            cut_ids=cut_ids,
            records=records,
            failures=failures,
            position=position,
            fingerprint=batch_fingerprint(cut_ids, records, checksums),
            load_ms=[round(item.load_ms, 3) for item in loaded],
            sample_rate=self.sample_rate,
        )


def _spans(records: list[dict]) -> list[tuple[int, int, int]]:
    """(row, start, length) of the part of each mixed row that the overlay covers."""
    spans = []
    for row, record in enumerate(records):
        segments = record.get("segments") if record["mode"] != "skip" and record.get("scale") else None
        if segments:
            start = min(s for s, _ in segments)
            end = max(s + n for s, n in segments)
            spans.append((row, start, end - start))
    return spans


def _shared_tensors(audio_numel: int, values_numel: int, batch_size: int) -> tuple[torch.Tensor, ...]:
    """Flat audio (float32), noise values (float32) and lengths (int64) tensors in one block.

    Inside a DataLoader worker the block is shared memory from the start, so handing the batch to
    the main process copies nothing and sets up one shared segment, not one per tensor.
    Shared-memory pages fault one by one (no huge pages on tmpfs): that is why the batch ships as
    little as it can.
    """
    sizes = [4 * audio_numel, 4 * values_numel, 8 * batch_size]
    offsets = [0, _align(sizes[0]), _align(sizes[0]) + _align(sizes[1])]
    total = offsets[-1] + sizes[-1]
    if torch.utils.data.get_worker_info() is None:
        block = torch.empty(total, dtype=torch.uint8)
    else:
        storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(total)
        block = torch.empty(0, dtype=torch.uint8).new(storage)
    dtypes = (torch.float32, torch.float32, torch.int64)
    return tuple(block[o : o + n].view(d) for o, n, d in zip(offsets, sizes, dtypes))


def _align(nbytes: int, to: int = 64) -> int:
    return (nbytes + to - 1) // to * to
