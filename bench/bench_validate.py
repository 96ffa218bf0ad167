"""validate-manifest throughput against raw decode, measured side by side in one run.

    python bench/bench_validate.py [--header-files 20000] [--decode-files 3000] [--repeats 5]
                                   [--jobs 0] [--json OUT]

Builds two synthetic corpora of 16 kHz PCM16 WAV files (NeMo manifests, absolute paths):
  header set  `--header-files` files of 1 s (header-only checks do not depend on length);
  decode set  `--decode-files` speech-like files of 4-16 s (like bench_pipeline's utterances).
Warms the page cache, then alternates, `--repeats` times:
  raw/1        soundfile.read(path, dtype="float32") of every decode-set file, one process;
  raw/J        the same in a pool of J processes (started before the clock, so raw gets the
               benefit of the doubt), J = --jobs (0: all cores, the validator's default);
  decode       nestkit.validate.validator.validate() with decoding (J workers; the time includes
               reading the manifest, starting the workers and every check);
  headers      validate(decode=False) on the header set.
Prints medians (files/s, audio-seconds/s), the ratio of `decode` to raw/J and to raw/1 (of the
medians, and the median of the per-repeat ratios), and the end-to-end wall time of the real CLI
once per mode (which also pays for importing lhotse and torch).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from nestkit.data.synthetic import speech_like, write_manifest
from nestkit.validate.audio import CheckSettings
from nestkit.validate.pool import default_jobs
from nestkit.validate.validator import ValidateOptions, validate

RATE = 16000


def make_corpora(folder: Path, header_files: int, decode_files: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    sources = [speech_like(16.0, seed * 1000 + k) for k in range(16)]  # sliced, so writing stays fast
    (folder / "h").mkdir(parents=True, exist_ok=True)
    (folder / "d").mkdir(parents=True, exist_ok=True)
    header, decode, decode_paths, audio_seconds = [], [], [], 0.0
    for i in range(header_files):
        path = str(folder / "h" / f"h{i:06d}.wav")
        sf.write(path, sources[i % 16][:RATE], RATE, subtype="PCM_16")
        header.append({"audio_filepath": path, "duration": 1.0})
    for i in range(decode_files):
        seconds = round(float(rng.uniform(4, 16)), 2)
        start = int(rng.integers(0, RATE * 16 - int(seconds * RATE) + 1))
        path = str(folder / "d" / f"d{i:06d}.wav")
        sf.write(path, sources[i % 16][start : start + int(round(seconds * RATE))], RATE, subtype="PCM_16")
        decode.append({"audio_filepath": path, "duration": seconds})
        decode_paths.append(path)
        audio_seconds += seconds
    return {
        "header": write_manifest(folder / "header.json", header),
        "decode": write_manifest(folder / "decode.json", decode),
        "decode_paths": decode_paths,
        "audio_seconds": audio_seconds,
    }


def _read(path: str) -> int:
    data, _ = sf.read(path, dtype="float32")
    return len(data)


def raw_serial(paths: list[str]) -> float:
    start = time.perf_counter()
    for path in paths:
        _read(path)
    return time.perf_counter() - start


def raw_parallel(pool, paths: list[str]) -> float:
    start = time.perf_counter()
    for _ in pool.imap_unordered(_read, paths, chunksize=32):
        pass
    return time.perf_counter() - start


def timed_validate(manifest: str, decode: bool, jobs: int) -> float:
    start = time.perf_counter()
    report = validate([manifest], options=ValidateOptions(checks=CheckSettings(decode=decode), jobs=jobs))
    elapsed = time.perf_counter() - start
    assert report.errors == 0 and report.warnings == 0, report.findings[:5]
    return elapsed


def cli_wall(manifest: str, decode: bool) -> float:
    command = [
        sys.executable,
        "-m",
        "nestkit.cli",
        "validate-manifest",
        manifest,
        "--format",
        "json",
        "--output",
        os.devnull,
    ] + ([] if decode else ["--no-decode"])
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--header-files", type=int, default=20000)
    parser.add_argument("--decode-files", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=0, help="0: all cores (the validator's default)")
    parser.add_argument("--json", type=str, default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    jobs = args.jobs or default_jobs()

    with tempfile.TemporaryDirectory(prefix="bench_validate_") as tmp:
        made = time.perf_counter()
        corpora = make_corpora(Path(tmp), args.header_files, args.decode_files)
        print(
            f"corpus: {args.header_files} header files, {args.decode_files} decode files "
            f"({corpora['audio_seconds'] / 3600:.2f} h) in {time.perf_counter() - made:.0f} s; jobs {jobs}"
        )
        paths = corpora["decode_paths"]
        raw_serial(paths)  # warm the page cache
        runs: dict[str, list[float]] = {"raw/1": [], f"raw/{jobs}": [], "decode": [], "headers": []}
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for repeat in range(args.repeats):
                runs["raw/1"].append(raw_serial(paths))
                runs[f"raw/{jobs}"].append(raw_parallel(pool, paths))
                runs["decode"].append(timed_validate(corpora["decode"], True, jobs))
                runs["headers"].append(timed_validate(corpora["header"], False, jobs))
                print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items()))
        cli = {"decode": cli_wall(corpora["decode"], True), "headers": cli_wall(corpora["header"], False)}

    counts = {
        "raw/1": len(paths),
        f"raw/{jobs}": len(paths),
        "decode": len(paths),
        "headers": args.header_files,
    }
    medians = {k: statistics.median(v) for k, v in runs.items()}
    figures = {
        name: {
            "median_s": round(medians[name], 3),
            "files_per_s": round(counts[name] / medians[name], 1),
            "audio_s_per_s": None if name == "headers" else round(corpora["audio_seconds"] / medians[name], 1),
        }
        for name in runs
    }
    # Ratios two ways: of the medians, and the median of each repeat's own ratio (raw and decode run
    # back to back, so a repeat's ratio is less exposed to load that comes and goes on a shared machine).
    for raw, name in ((f"raw/{jobs}", "decode_vs_raw_parallel"), ("raw/1", "decode_vs_raw_serial")):
        paired = [r / d for r, d in zip(runs[raw], runs["decode"])]
        figures[name] = {
            "of_medians": round(medians[raw] / medians["decode"], 3),
            "median_of_repeats": round(statistics.median(paired), 3),
        }
    figures["cli_wall_s"] = {k: round(v, 2) for k, v in cli.items()}
    figures["cli_files_per_s"] = {
        "decode": round(len(paths) / cli["decode"], 1),
        "headers": round(args.header_files / cli["headers"], 1),
    }
    figures["setup"] = {
        "jobs": jobs,
        "repeats": args.repeats,
        "header_files": args.header_files,
        "decode_files": args.decode_files,
        "audio_hours": round(corpora["audio_seconds"] / 3600, 3),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
