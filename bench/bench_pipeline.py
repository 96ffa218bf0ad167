"""Data pipeline throughput against raw decode, measured side by side in one run.

    python bench/bench_pipeline.py [--utterances 160] [--repeats 5] [--json OUT]
    python bench/bench_pipeline.py --config CONFIG.yaml [key=value ...]   (your own corpus)

Builds a synthetic corpus (16 kHz PCM16 WAV utterances of 4-16 s and 12 noise files of 10-40 s),
or takes model.train_ds of a training config (its manifests, noise, augmentor and batching; the
config's num_workers is replaced by 0 and 2), warms the page cache and the (persistent) DataLoader workers with one epoch each, then alternates,
`--repeats` times, one full pass of:
  raw      soundfile.read of every utterance (the segment the plan reads, float32), nothing else;
  pipe/0   nestkit's DataLoader, batch 8, noise + MultiSpeakerNoiseAugmentation on, 0 workers;
  pipe/2   the same with 2 workers (persistent, as in training).
Reports audio-seconds per second (median of the repeats) and each pipeline's ratio to raw decode
measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from nestkit.config import config_from_dict, load_config
from nestkit.data.loading import FileSegment, file_segment
from nestkit.data.pipeline import build_pipeline
from nestkit.data.synthetic import noise_like, speech_like, write_manifest, write_wav


def make_corpus(folder: Path, utterances: int, seed: int = 0) -> tuple[str, str, list[str], float]:
    rng = np.random.default_rng(seed)
    entries, paths, total = [], [], 0.0
    for i in range(utterances):
        seconds = round(float(rng.uniform(4, 16)), 2)
        path = write_wav(folder / f"utt{i:05d}.wav", speech_like(seconds, i))
        entries.append({"audio_filepath": path, "duration": seconds})
        paths.append(path)
        total += seconds
    noises = []
    for i in range(12):
        seconds = round(float(rng.uniform(10, 40)), 2)
        noises.append(
            {"audio_filepath": write_wav(folder / f"noise{i:03d}.wav", noise_like(seconds, i)), "duration": seconds}
        )
    return write_manifest(folder / "train.json", entries), write_manifest(folder / "noise.json", noises), paths, total


def raw_decode(segments: list[FileSegment]) -> float:
    seconds = 0.0
    for segment in segments:
        try:
            with sf.SoundFile(segment.path) as f:
                f.seek(int(segment.offset * f.samplerate))
                data = f.read(int(segment.duration * f.samplerate), dtype="float32")
                seconds += len(data) / f.samplerate
        except (OSError, RuntimeError):  # a broken file: the pipeline substitutes it, raw just skips it
            continue
    return seconds


def planned_segments(pipeline) -> list[FileSegment]:
    """Every file segment of the epoch's plan: exactly what the pipeline reads for its utterances."""
    plan = pipeline.sampler.plan(0)
    return [
        seg
        for b in range(plan.num_batches)
        for cut in pipeline.sampler.batch_cuts(b, 0)
        if (seg := file_segment(cut)) is not None
    ]


def pipeline_pass(pipeline, loader, epoch: int) -> float:
    pipeline.sampler.set_epoch(epoch)
    seconds = 0.0
    for batch in loader:
        seconds += float(batch.audio_len.sum()) / 16000
    return seconds


def timed(fn, *args) -> tuple[float, float]:
    start = time.perf_counter()
    seconds = fn(*args)
    return seconds, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument("--config", type=str, default=None, help="a training config: bench its model.train_ds")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides of --config")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.config:
            cfg = load_config(args.config, args.overrides).config
            corpus = {"config": args.config, "overrides": args.overrides}
        else:
            train, noise, _, _ = make_corpus(folder, args.utterances)
            cfg = config_from_dict(
                {
                    "model": {
                        "train_ds": {
                            "manifest_filepath": [train],
                            "noise_manifest": [noise],
                            "batch_size": 8,
                            "min_duration": None,
                            "max_duration": None,
                            "drop_last": False,
                            "num_workers": 0,
                        }
                    },
                }
            ).config
            corpus = {"utterances": args.utterances, "batch_size": 8}
        pipeline = build_pipeline(cfg, run_dir=folder / "run")
        paths = planned_segments(pipeline)
        total = raw_decode(paths)
        loaders = {0: pipeline.dataloader(num_workers=0), 2: pipeline.dataloader(num_workers=2)}
        # raw_decode above warmed the page cache
        for loader in loaders.values():  # start the workers
            pipeline_pass(pipeline, loader, 0)
        rates: dict[str, list[float]] = {"raw": [], "pipe/0": [], "pipe/2": []}
        for r in range(args.repeats):
            for name, fn, fn_args in (
                ("raw", raw_decode, (paths,)),
                ("pipe/0", pipeline_pass, (pipeline, loaders[0], r + 1)),
                ("pipe/2", pipeline_pass, (pipeline, loaders[2], r + 1)),
            ):
                seconds, wall = timed(fn, *fn_args)
                rates[name].append(seconds / wall)
            print(
                f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()),
                file=sys.stderr,
            )

    medians = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "corpus": {**corpus, "segments": len(paths), "audio_seconds": round(total, 1)},
        "audio_seconds_per_second": {k: round(v, 1) for k, v in medians.items()},
        "ratio_to_raw_decode": {k: round(v / medians["raw"], 3) for k, v in medians.items() if k != "raw"},
        "repeats": args.repeats,
    }
    print(f"{'path':<10}{'audio-s/s (median)':>20}{'vs raw decode':>16}")
    for name, value in medians.items():
        ratio = "" if name == "raw" else f"{value / medians['raw']:.1%}"
        print(f"{name:<10}{value:>20,.0f}{ratio:>16}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
