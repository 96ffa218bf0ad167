"""Planning and lookup at scale: 1M cuts.

    python bench/bench_plan.py [--cuts 1000000] [--repeats 3] [--json OUT]

Writes a NeMo manifest of `--cuts` lines (durations 1-20 s; the lines point at 50 real 20 s files
at random offsets, so batches can be loaded), then measures, as medians of `--repeats`:
  index     reading the manifest into nestkit's CutIndex (what every command does first);
  plan/*    planning one epoch for 8 ranks: fixed batch_size 8; batch_duration 120 s, 30 buckets;
  batch     looking up batch 10,000 of rank 7 in a planned epoch (O(1));
  lookup    `nestkit lookup CONFIG --batch 10000 --rank 7 --world-size 8` end to end in a fresh
            process (reads the manifest, plans, loads the batch's audio, prints the table).
Targets: plan 1M cuts in under 10 s; lookup of batch 10,000 in under 10 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from nestkit.data.manifest import CutIndex
from nestkit.data.plan import BatchingConfig, plan_epoch
from nestkit.data.synthetic import speech_like, write_wav


def write_manifest(folder: Path, cuts: int) -> str:
    files = [write_wav(folder / f"long{i:02d}.wav", speech_like(20.0, i)) for i in range(50)]
    rng = np.random.default_rng(0)
    durations = rng.uniform(1.0, 20.0, cuts).round(2)
    offsets = (rng.uniform(0, 1, cuts) * (20.0 - durations)).round(2)
    which = rng.integers(0, len(files), cuts)
    path = folder / "train.json"
    with open(path, "w") as f:
        for d, o, w in zip(durations, offsets, which):
            f.write(f'{{"audio_filepath": "{files[w]}", "offset": {o}, "duration": {d}, "text": ""}}\n')
    return str(path)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuts", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = write_manifest(folder, args.cuts)
        results["index_s"] = median_time(lambda: CutIndex.build(manifest), args.repeats)
        index = CutIndex.build(manifest)
        modes = {
            "plan_fixed_s": BatchingConfig(batch_size=8),
            "plan_bucketed_s": BatchingConfig(batch_size=None, batch_duration=120.0, num_buckets=30),
        }
        for name, mode in modes.items():
            results[name] = median_time(lambda mode=mode: plan_epoch(index.duration, mode, 0, 0, 8), args.repeats)
        plan = plan_epoch(index.duration, modes["plan_fixed_s"], 0, 0, 8)
        results["batch_lookup_ms"] = 1e3 * median_time(
            lambda: [index.cut(int(r)) for r in plan.batch_rows(7, 10_000)], args.repeats
        )
        config = folder / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "model": {
                        "train_ds": {
                            "manifest_filepath": manifest,
                            "batch_size": 8,
                            "num_workers": 0,
                            "min_duration": None,
                            "max_duration": None,
                        }
                    },
                    "trainer": {"devices": 8},
                }
            )
        )
        command = [
            sys.executable,
            "-m",
            "nestkit.cli",
            "lookup",
            str(config),
            "--batch",
            "10000",
            "--rank",
            "7",
            "--world-size",
            "8",
        ]
        results["lookup_cli_s"] = median_time(
            lambda: subprocess.run(command, check=True, capture_output=True), args.repeats
        )
    results = {k: round(v, 3) for k, v in results.items()}
    results["cuts"] = args.cuts
    for key, value in results.items():
        print(f"{key:<18}{value}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
