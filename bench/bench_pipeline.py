"""Data pipeline throughput against raw decode, measured side by side in one run.

    python bench/bench_pipeline.py [--utterances 400] [--repeats 7] [--corpus-dir DIR] [--json OUT]
    python bench/bench_pipeline.py --config CONFIG.yaml [key=value ...]   (your own corpus)

Builds a corpus shaped like real speech corpora (`nestkit.data.synthetic.make_realistic_corpus`:
log-normal utterance durations of 1-20 s with mean 7.6 s; 80% mono 16 kHz PCM16 WAV, 8% FLAC, 6%
Ogg/Vorbis, 3% stereo, 3% 44.1 kHz; 12 noise files of 10-40 s plus three silent or near-silent
ones), or takes model.train_ds of a training config (its manifests, noise, augmentor and batching;
the config's num_workers is replaced by 0 and 2), warms the page cache and the (persistent)
DataLoader workers with one epoch each, then alternates, `--repeats` times, one full pass of:
  raw      soundfile.read of every utterance (the segment the plan reads, float32), nothing else;
  pipe/0   nestkit's DataLoader, batch 8, noise + MultiSpeakerNoiseAugmentation on, 0 workers;
  pipe/2   the same with 2 workers (persistent, as in training).
Reports audio-seconds per second (median of the repeats) and each pipeline's ratio to raw decode
measured in the same run: the ratio of the medians and the median of the per-repeat ratios, and for
pipe/0 also the ratio in CPU time of this process (on a shared machine, CPU time is what other
processes distort least).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

from nestkit.config import config_from_dict, load_config
from nestkit.data.loading import FileSegment, file_segment
from nestkit.data.pipeline import build_pipeline
from nestkit.runfolder.quarantine import read_quarantine


def realistic_corpus(folder: Path, utterances: int) -> dict:
    """The realistic corpus in `folder`, made unless an earlier run left it there."""
    done = folder / "corpus.json"
    if done.exists() and json.loads(done.read_text())["utterances"] == utterances:
        return json.loads(done.read_text())
    from nestkit.data.synthetic import make_realistic_corpus  # here: a kept corpus can bench older trees

    corpus = {**make_realistic_corpus(folder, utterances), "utterances": utterances}
    done.write_text(json.dumps(corpus))
    return corpus


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


def timed(fn, *args) -> tuple[float, float, float]:
    """Audio seconds, wall seconds and this process's CPU seconds (all its threads) of fn(*args)."""
    start, cpu = time.perf_counter(), time.process_time()
    seconds = fn(*args)
    return seconds, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--corpus-dir", type=str, default=None, help="keep the generated corpus here (reused)")
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument("--config", type=str, default=None, help="a training config: bench its model.train_ds")
    parser.add_argument(
        "--no-silence-memo", action="store_true", help="read silent noise files every time (the memo's effect)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides of --config")
    args = parser.parse_args()
    logging.getLogger("nestkit.data").setLevel(logging.ERROR)  # quarantine warnings: counted, not printed

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.config:
            cfg = load_config(args.config, args.overrides).config
            corpus = {"config": args.config, "overrides": args.overrides}
        else:
            made = realistic_corpus(Path(args.corpus_dir) if args.corpus_dir else folder / "corpus", args.utterances)
            train, noise = made["train"], made["noise"]
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
            corpus = {"utterances": args.utterances, "batch_size": 8, "realistic": True}
        pipeline = build_pipeline(cfg, run_dir=folder / "run")
        if args.no_silence_memo:
            pipeline.dataset.silence_memo = None
        paths = planned_segments(pipeline)
        total = raw_decode(paths)
        loaders = {2: pipeline.dataloader(num_workers=2), 0: pipeline.dataloader(num_workers=0)}
        # raw_decode above warmed the page cache; a first epoch starts the workers (forked with
        # nothing proven silent yet) and lets every process meet the corpus's silent noise files
        for loader in loaders.values():
            pipeline_pass(pipeline, loader, 0)
        rates: dict[str, list[float]] = {"raw": [], "pipe/0": [], "pipe/2": []}
        cpu_rates: dict[str, list[float]] = {"raw": [], "pipe/0": []}  # pipe/2 works in other processes
        for r in range(args.repeats):
            for name, fn, fn_args in (
                ("raw", raw_decode, (paths,)),
                ("pipe/0", pipeline_pass, (pipeline, loaders[0], r + 1)),
                ("pipe/2", pipeline_pass, (pipeline, loaders[2], r + 1)),
            ):
                seconds, wall, cpu = timed(fn, *fn_args)
                rates[name].append(seconds / wall)
                if name in cpu_rates:
                    cpu_rates[name].append(seconds / cpu)
            print(
                f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()),
                file=sys.stderr,
            )

        quarantined = len(read_quarantine(folder / "run"))
        memo = getattr(pipeline.dataset, "silence_memo", None)
        silent = {
            "memo": memo is not None,
            "proven_silent_in_process": [Path(p).name for p in memo.proven()] if memo else [],
            "noise_reads_skipped_in_process": memo.reads_skipped if memo else 0,
            "quarantine_records": quarantined,
        }

    medians = {k: statistics.median(v) for k, v in rates.items()}
    # each repeat's pipelines ran seconds after its raw pass: their ratio cancels slow drifts in load
    paired = {k: statistics.median(p / r for p, r in zip(v, rates["raw"])) for k, v in rates.items() if k != "raw"}
    result = {
        "corpus": {**corpus, "segments": len(paths), "audio_seconds": round(total, 1)},
        "audio_seconds_per_second": {k: round(v, 1) for k, v in medians.items()},
        "ratio_to_raw_decode": {k: round(v / medians["raw"], 3) for k, v in medians.items() if k != "raw"},
        "median_per_repeat_ratio": {k: round(v, 3) for k, v in paired.items()},
        # CPU time is what contention on a shared machine distorts least
        "cpu_ratio_to_raw_decode": {
            "pipe/0": round(statistics.median(p / r for p, r in zip(cpu_rates["pipe/0"], cpu_rates["raw"])), 3)
        },
        "per_repeat": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "silent_noise": silent,
        "repeats": args.repeats,
    }
    print(f"{'path':<10}{'audio-s/s (median)':>20}{'vs raw decode':>16}{'per-repeat ratio':>20}")
    for name, value in medians.items():
        ratio = "" if name == "raw" else f"{value / medians['raw']:.1%}"
        pair = "" if name == "raw" else f"{paired[name]:.1%}"
        print(f"{name:<10}{value:>20,.0f}{ratio:>16}{pair:>20}")
    print(f"pipe/0 vs raw decode in CPU time (median per repeat): {result['cpu_ratio_to_raw_decode']['pipe/0']:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
