"""The cut index at pre-training scale: first build, then what every rank pays to start.

    python bench/bench_index.py [--cuts 10000000] [--ranks 8] [--plan] [--json OUT] [--keep DIR]

Writes a synthetic NeMo manifest of `--cuts` lines under /tmp (or DIR; never in the repository), then,
each in a fresh process so that the figures are that process's own:

  build     the first `CutIndex.build` (a streaming pass): wall time, peak RSS of the building process
            (ru_maxrss) and the size of the index it wrote (the columns every rank maps);
  start     `--ranks` processes started together, as the ranks of a node: each opens the built index
            (freshness check + memory maps) and reads every duration, as the planner does; per process:
            seconds until ready, extra RSS (VmRSS after - before) and extra PSS (the pages it shares
            counted 1/N: what the node really pays per rank);
  plan      (--plan) the same, then the rank's `Planner` deals epoch 0 to 8 ranks (batch_duration 600 s,
            30 buckets), as training does: the first rank to need the epoch plans it into the index
            folder and the others map it. Index + plan: the whole start-up of a rank before its first batch.

Targets (issue #9): 10M cuts -- index ready in well under 2 s per rank after the first build, <= 150 MB
extra RSS per rank, peak RSS while building <= 2x the index size; 100M cuts indexed on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LINES_PER_WRITE = 200_000


def write_manifest(path: Path, cuts: int) -> int:
    """NeMo lines as a data preparation writes them: absolute paths, durations 1-20 s, some offsets."""
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for at in range(0, cuts, LINES_PER_WRITE):
            n = min(LINES_PER_WRITE, cuts - at)
            durations = rng.uniform(1.0, 20.0, n).round(2)
            ids = np.arange(at, at + n)
            f.write(
                "".join(
                    f'{{"audio_filepath": "/data/corpus/spk{i % 5000:04d}/utt{i:09d}.wav", "duration": {d}, '
                    f'"text": ""}}\n'
                    for i, d in zip(ids.tolist(), durations.tolist())
                )
            )
    return path.stat().st_size


BUILD = """
import json, resource, sys, time
from nestkit.data.index import CutIndex, index_columns_bytes
started = time.perf_counter()
index = CutIndex.build(sys.argv[1])
took = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"build_s": took, "peak_rss": peak, "rows": len(index), "columns_bytes": index_columns_bytes(index),
                  "folder": index.folder}))
"""

START = """
import json, sys, time
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))
def pss():
    with open("/proc/self/smaps_rollup") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("Pss:"))
import numpy as np
from nestkit.data.index import CutIndex
from nestkit.data.plan import BatchingConfig
planner = None
if sys.argv[3] == "plan":
    from nestkit.data.sampler import Planner as planner  # imports torch and lhotse: before the clock
go = float(sys.argv[2])
while time.time() < go:
    time.sleep(0.001)
rss0, pss0 = status("VmRSS:"), pss()
started = time.perf_counter()
index = CutIndex.build(sys.argv[1])
total = float(np.sum(index.duration))  # the planner reads every duration
ready = time.perf_counter() - started
rss1, pss1 = status("VmRSS:"), pss()
out = {"ready_s": ready, "rss": rss1 - rss0, "pss": pss1 - pss0, "hours": total / 3600}
if planner is not None:  # as a training rank: the epoch planned once (by the first rank), mapped by all
    t = time.perf_counter()
    planner(index, BatchingConfig(batch_size=None, batch_duration=600.0), 0).deal(0, 8)
    out["plan_s"] = time.perf_counter() - t
    out["startup_s"] = time.perf_counter() - started
    out["rss_planned"] = status("VmRSS:") - rss0
print(json.dumps(out))
"""


def python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env)


def result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"benchmark process failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def mb(n: float) -> str:
    return f"{n / 2**20:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuts", type=int, default=10_000_000)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--plan", action="store_true", help="also plan an epoch in every rank")
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument("--keep", type=str, default=None, help="folder for the manifest and index (kept)")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="nestkit-bench-index-", dir="/tmp"))
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / f"train_{args.cuts}.json"
    try:
        started = time.perf_counter()
        if not manifest.exists():
            size = write_manifest(manifest, args.cuts)
            print(f"manifest: {args.cuts:,} lines, {mb(size)} written in {time.perf_counter() - started:.0f} s")
        shutil.rmtree(manifest.parent / ".nestkit-index", ignore_errors=True)
        build = result(python(BUILD, str(manifest)))
        ratio = build["peak_rss"] / build["columns_bytes"]
        print(
            f"build: {build['rows']:,} cuts in {build['build_s']:.1f} s, peak RSS {mb(build['peak_rss'])}, "
            f"index {mb(build['columns_bytes'])} (peak/index {ratio:.2f})"
        )
        go = time.time() + (15.0 if args.plan else 2.0)  # every rank starts at the same moment, imports done
        procs = [python(START, str(manifest), str(go), "plan" if args.plan else "") for _ in range(args.ranks)]
        ranks = [result(p) for p in procs]
        ready = [r["ready_s"] for r in ranks]
        print(
            f"start, {args.ranks} ranks together: index ready median {statistics.median(ready):.3f} s "
            f"(max {max(ready):.3f}); extra RSS median {mb(statistics.median(r['rss'] for r in ranks))} "
            f"(max {mb(max(r['rss'] for r in ranks))}); extra PSS median {mb(statistics.median(r['pss'] for r in ranks))}"
        )
        if args.plan:
            print(
                f"  with plan_epoch: plan median {statistics.median(r['plan_s'] for r in ranks):.2f} s, "
                f"start-up {statistics.median(r['startup_s'] for r in ranks):.2f} s, "
                f"RSS after planning {mb(statistics.median(r['rss_planned'] for r in ranks))}"
            )
        if args.json:
            Path(args.json).write_text(json.dumps({"cuts": args.cuts, "build": build, "ranks": ranks}, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
