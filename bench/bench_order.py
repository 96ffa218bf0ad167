"""The shard-aware order (`order: shards`) against the global shuffle, in one run on the same sharded corpus.

    python bench/bench_order.py [--utterances 480] [--shard-size 20] [--repeats 5] [--workers 0] [--cold] [--json OUT]

Builds bench_shards.py's corpus (16 kHz PCM16 WAV utterances of 2-12 s, noise files), copies it into NeMo's
tarred layout (WAV members) and lhotse Shar (FLAC members) with nestkit's writers, serves both over HTTP on
127.0.0.1 (the tests' Python range server and, when installed, nginx), warms every variant once, then
alternates `--repeats` full epochs of each variant (the variants in a rotated order every pass):

  <layout>/<where>/<order>   the training pipeline (batch 8, noise + augmentor) over `layout` (tarred,
                             shar) read from `where` (local, http-py, http-nginx) in `order` (global,
                             shards with shard_window 2).

Within an order every location gives bit-identical batches (checked). `--cold` evicts the shards from the
page cache before every pass (posix_fadvise DONTNEED on our own files only; nothing else on the machine is
touched), so that reads reach the disk, where the access pattern counts. Reports audio-seconds per second
of wall time and per CPU-second of every process involved (bench_shards.py explains why CPU time is what a
busy machine does not distort), their medians, the same-run ratio shards/global of each layout and
location, the locality of the two orders (distinct shards per step, forward reads per rank) for 1 and 8
ranks, and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_shards import NGINX, Nginx, Server, cpu_seconds, dataset, make_corpus, pipeline_pass

from nestkit.config import config_from_dict
from nestkit.data.locality import locality
from nestkit.data.pipeline import build_pipeline
from nestkit.data.plan import ShardLayout
from nestkit.data.shards.write import write_nemo_tarred, write_shar

SHARD_WINDOW = 2


def evict(paths: list[str]) -> None:
    """Drop these files' pages from the page cache (our files only)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=480)
    parser.add_argument("--shard-size", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--cold", action="store_true", help="evict the shards from the page cache before each pass")
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="nestkit-bench-order-") as tmp:
        root = Path(tmp)
        train, noise = make_corpus(root / "files", args.utterances)
        tarred = write_nemo_tarred(train, str(root / "served" / "tarred"), args.shard_size, progress=False)
        shar = write_shar(train, str(root / "served" / "shar"), args.shard_size, progress=False)
        servers = [Server(root / "served")] + ([Nginx(root / "served")] if Path(NGINX).exists() else [])
        last = len(tarred.tars) - 1
        try:
            sources = {
                "tarred/local": {
                    "manifest_filepath": [tarred.manifests[0]],
                    "is_tarred": True,
                    "tarred_audio_filepaths": tarred.tars,
                },
                "shar/local": {"shar_path": str(root / "served" / "shar")},
            }
            for server in servers:
                sources[f"tarred/http-{server.name}"] = {
                    "manifest_filepath": [f"{server.base}/tarred/tarred_audio_manifest.json"],
                    "is_tarred": True,
                    "tarred_audio_filepaths": f"{server.base}/tarred/audio__OP_0..{last}_CL_.tar",
                }
                if server.name == "nginx":
                    sources[f"shar/http-{server.name}"] = {
                        "shar_path": {
                            "cuts": f"{server.base}/shar/cuts._OP_000000..{last:06d}_CL_.jsonl.gz",
                            "recording": f"{server.base}/shar/recording._OP_000000..{last:06d}_CL_.tar",
                        }
                    }
            pipelines, loaders = {}, {}
            for source, keys in sources.items():
                for order in ("global", "shards"):
                    ds = dataset(noise, args.workers, order=order, shard_window=SHARD_WINDOW, **keys)
                    cfg = config_from_dict(
                        {"model": {"train_ds": ds}, "nestkit": {"index_cache_dir": str(root / "index-cache")}}
                    ).config
                    name = f"{source}/{order}"
                    pipelines[name] = build_pipeline(cfg, run_dir=root / "run" / name.replace("/", "-"))
                    loaders[name] = pipelines[name].dataloader()
            names = list(pipelines)
            first = {name: pipeline_pass(pipelines[name], loaders[name], 0)[1] for name in names}  # warm
            for order in ("global", "shards"):
                prints = [first[n] for n in names if n.endswith(order)]
                assert all(p == prints[0] for p in prints), f"{order}: batches differ between locations"
            shard_files = tarred.tars + shar.tars
            rates: dict[str, list[float]] = {name: [] for name in names}
            per_cpu: dict[str, list[float]] = {name: [] for name in names}
            for r in range(args.repeats):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    if args.cold:
                        evict(shard_files)
                    start, cpu = time.perf_counter(), cpu_seconds()
                    seconds, _ = pipeline_pass(pipelines[name], loaders[name], r + 1)
                    rates[name].append(seconds / (time.perf_counter() - start))
                    per_cpu[name].append(seconds / max(cpu_seconds() - cpu, 1e-9))
                print(f"pass {r + 1} done, load {os.getloadavg()[0]:.1f}", flush=True)
            measures = {}
            for order in ("global", "shards"):
                pipeline = pipelines[f"tarred/local/{order}"]
                layout = ShardLayout(pipeline.index.shard, pipeline.index.member_offset)
                for world in (1, 8):
                    found = locality(pipeline.sampler.planner.deal(1, world), layout)
                    measures[f"{order} W={world}"] = {
                        "shards_per_step": found.shards_per_step,
                        "forward_reads": found.forward_reads,
                    }
        finally:
            for server in servers:
                server.stop()
    load_after = os.getloadavg()
    median = {name: statistics.median(v) for name, v in rates.items()}
    cpu = {name: statistics.median(v) for name, v in per_cpu.items()}
    sources_run = list(dict.fromkeys(name.rsplit("/", 1)[0] for name in names))
    print(
        f"\n{len(tarred.tars)} shards of {args.shard_size} utterances, shard_window {SHARD_WINDOW}, "
        f"workers={args.workers}, {'cold' if args.cold else 'warm'} page cache; medians of {args.repeats} passes; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
    )
    print(
        f"  {'':22s} {'global wall':>11s} {'shards wall':>11s} {'ratio':>6s} {'global CPU':>11s} {'shards CPU':>11s} {'ratio':>6s}"
    )
    ratios = {}
    for source in sources_run:
        g, s = f"{source}/global", f"{source}/shards"
        ratios[source] = {"wall": median[s] / median[g], "cpu": cpu[s] / cpu[g]}
        print(
            f"  {source:22s} {median[g]:11,.0f} {median[s]:11,.0f} {ratios[source]['wall']:6.2f} "
            f"{cpu[g]:11,.0f} {cpu[s]:11,.0f} {ratios[source]['cpu']:6.2f}"
        )
    print("  locality (tarred corpus, batch 8):")
    for key, m in measures.items():
        print(
            f"    {key:12s} shards per step {m['shards_per_step']:6.2f}   forward reads per rank {m['forward_reads']:.2f}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "rates": rates,
                    "per_cpu": per_cpu,
                    "ratios": ratios,
                    "locality": measures,
                    "load": [load_before, load_after],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
