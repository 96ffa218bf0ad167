"""Planning at pre-training scale: 10M and 100M cuts, and what a rank pays once the plan is shared.

    python bench/bench_plan_scale.py [--cuts 10000000] [--repeats 3] [--json OUT]

Synthetic durations (1-20 s, uniform) stand in for the index's duration column: this measures the
planner alone (the index has its own benchmark, bench/bench_index.py). For each mode (fixed
batch_size 8; batch_duration 120 s with 30 buckets):
  plan_s          plan_sequence for one epoch (median of --repeats), in this process;
  plan_peak_mb    peak RSS growth while planning (a fresh process, so earlier runs do not hide it);
  cached_open_s   a rank opening the epoch another process already planned: the shared plan file
                  memory-mapped (nestkit.data.plan_cache), median over --repeats fresh processes;
  cached_rss_mb   that rank's RSS growth after opening it and dealing rank 7 of 8 its first
                  1,000 micro-batches (the pages a rank really touches).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from nestkit.data.plan import BatchingConfig, plan_sequence
from nestkit.data.plan_cache import cached_sequence

MODES = {
    "fixed": BatchingConfig(batch_size=8, shuffle=True, drop_last=True),
    "bucketed": BatchingConfig(batch_size=None, batch_duration=120.0, num_buckets=30, shuffle=True, drop_last=True),
}

CHILD = textwrap.dedent(
    """
    import resource, sys, time, json
    import numpy as np
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from nestkit.data.plan import BatchingConfig, deal, plan_sequence
    from nestkit.data.plan_cache import cached_sequence

    def rss_mb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    mode = BatchingConfig(**{mode!r})
    before = rss_mb()
    if {what!r} == "plan":
        durations = np.load({durations!r}, mmap_mode="r")
        before = rss_mb()
        plan_sequence(durations, mode, 0, 0)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({{"peak_mb": peak - before}}))
    else:
        started = time.perf_counter()
        seq = cached_sequence(Path({cache!r}), {{"bench": {mode!r}}}, 0, lambda: (_ for _ in ()).throw(SystemExit("not cached")))
        plan = deal(seq, 8, 0, 1, mode.drop_last)
        rows = [plan.batch_rows(7, k) for k in range(1000)]
        elapsed = time.perf_counter() - started
        print(json.dumps({{"open_s": elapsed, "rss_mb": rss_mb() - before}}))
    """
)


def run_child(repo: str, **kw) -> dict:
    code = CHILD.format(repo=repo, **kw)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuts", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()
    repo = str(Path(__file__).resolve().parents[1])
    durations = np.random.default_rng(0).uniform(1.0, 20.0, args.cuts)
    results: dict = {"cuts": args.cuts}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "durations.npy", durations)
        for name, mode in MODES.items():
            settings = {k: v for k, v in mode.__dict__.items() if k != "source"}
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                sequence = plan_sequence(durations, mode, 0, 0)
                times.append(time.perf_counter() - started)
            peak = run_child(repo, mode=settings, what="plan", durations=str(Path(tmp) / "durations.npy"), cache="")
            cache = Path(tmp) / f"cache-{name}"
            cached_sequence(cache, {"bench": settings}, 0, lambda sequence=sequence: sequence)
            opens = [
                run_child(repo, mode=settings, what="open", durations="", cache=str(cache)) for _ in range(args.repeats)
            ]
            results[name] = {
                "micro_batches": len(sequence),
                "plan_s": round(statistics.median(times), 3),
                "plan_peak_mb": round(peak["peak_mb"], 1),
                "cached_open_s": round(statistics.median(o["open_s"] for o in opens), 4),
                "cached_rss_mb": round(statistics.median(o["rss_mb"] for o in opens), 1),
            }
            del sequence
            print(name, results[name], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
