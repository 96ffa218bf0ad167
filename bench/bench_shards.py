"""Sharded data against per-file data, in one run on the same corpus.

    python bench/bench_shards.py [--utterances 240] [--repeats 5] [--workers 0] [--json OUT]

Builds a synthetic corpus (16 kHz PCM16 WAV utterances of 2-12 s, noise files), copies it into NeMo's
tarred layout (the WAV files as members) and into lhotse Shar (FLAC members, lhotse's SharWriter) with
`nestkit shard`'s writers, serves both over HTTP on 127.0.0.1 with byte ranges -- the tests' range server
(tests/data/shards/range_server.py, Python, run as a process) and, when installed, nginx (a C server, as
object stores are) -- warms every variant once (page cache, member indexes, the cut indexes), then
alternates `--repeats` times one full epoch of each:

  files            the nestkit pipeline over the per-file manifest (batch 8, noise + augmentor, as training);
  tarred/local     the same pipeline over the NeMo tarred copy (one ranged read per utterance);
  tarred/http-S    the same over HTTP, server S (py or nginx);
  shar/local       the same pipeline over the Shar copy (FLAC decode);
  shar/http-S      the same over HTTP;
  raw/tarred    sequential decode of the tarred members (tarfile stream + soundfile), nothing else;
  raw/shar      the same for the Shar members.

Every pipeline variant plans the same cuts in the same order (same cut ids, same seed): their batches
are bit-identical (checked: the fingerprints of the first pass must match). Each pass runs the variants
in a rotated order, so that a machine getting busier or quieter during the run favours none.

Two rates per variant: audio-seconds per second of wall time, and per CPU-second summed over every
process involved (this one, its DataLoader workers, the HTTP server). On a busy machine wall time
favours a variant that spreads its work over more processes (the HTTP server is one more process
competing for the cores); CPU time does not, and it is what the ratios are judged on there. Reports audio-seconds per
second (medians) and the ratios the targets name: tarred/local vs files (the same WAV bytes, so the
same decode: >= 1.0 expected), http vs local (>= 0.7), and each pipeline vs raw decode of its members.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from nestkit.config import config_from_dict
from nestkit.data.pipeline import build_pipeline
from nestkit.data.shards.write import write_nemo_tarred, write_shar
from nestkit.data.synthetic import noise_like, speech_like, write_manifest, write_wav

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "tests" / "data" / "shards" / "range_server.py"
SHARD_SIZE = 40  # utterances per shard
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def make_corpus(folder: Path, utterances: int, seed: int = 0) -> tuple[str, str]:
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(utterances):
        seconds = round(float(rng.uniform(2, 12)), 2)
        path = write_wav(folder / "audio" / f"utt{i:05d}.wav", speech_like(seconds, i))
        entries.append({"audio_filepath": path, "duration": seconds})
    noises = []
    for i in range(8):
        seconds = round(float(rng.uniform(10, 30)), 2)
        path = write_wav(folder / "noise" / f"noise{i:03d}.wav", noise_like(seconds, i))
        noises.append({"audio_filepath": path, "duration": seconds})
    return write_manifest(folder / "train.json", entries), write_manifest(folder / "noise.json", noises)


class Server:
    """The tests' range server (Python's http.server plus byte ranges): every request costs it a few
    hundred microseconds of Python, on the same cores as the pipeline."""

    name = "py"

    def __init__(self, root: Path):
        self.proc = subprocess.Popen([sys.executable, str(SERVER), str(root)], stdout=subprocess.PIPE, text=True)
        self.base = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


NGINX_CONF = """
{user}daemon off; master_process off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off; sendfile on; tcp_nodelay on; keepalive_requests 1000000; keepalive_timeout 600;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""


class Nginx:
    """nginx on 127.0.0.1 (when installed): a C server answering ranges, as object stores do."""

    name = "nginx"

    def __init__(self, root: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.tmp = Path(tempfile.mkdtemp(prefix="nestkit-nginx-"))
        conf = self.tmp / "nginx.conf"
        user = "user root; " if os.geteuid() == 0 else ""  # as root, nginx's workers would read as nobody
        conf.write_text(NGINX_CONF.format(user=user, tmp=self.tmp, port=port, root=root))
        self.proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(self.tmp)], stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise SystemExit("nginx did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)


def dataset(noise: str, workers: int, **keys) -> dict:
    return {
        "noise_manifest": [noise],
        "batch_size": 8,
        "min_duration": None,
        "max_duration": None,
        "drop_last": False,
        "num_workers": workers,
        **keys,
    }


def pipeline_pass(pipeline, loader, epoch: int) -> tuple[float, list[str]]:
    pipeline.sampler.set_epoch(epoch)
    seconds, prints = 0.0, []
    for batch in loader:
        seconds += float(batch.audio_len.sum()) / 16000
        prints.append(batch.fingerprint)
    return seconds, prints


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    """CPU time of this process and of every process under it (servers, DataLoader workers): what a
    pass costs the machine, which a busy machine does not distort the way it distorts wall time."""
    total, todo, seen = 0.0, [os.getpid()], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue  # a process that just ended
    return total


def raw_members(tars: list[str]) -> float:
    """Sequential decode of every audio member, reading each tar front to back as a stream."""
    seconds = 0.0
    for tar in tars:
        with tarfile.open(tar, mode="r|") as stream:
            for member in stream:
                if not member.isreg() or member.name.endswith(".json"):
                    continue
                data, rate = sf.read(io.BytesIO(stream.extractfile(member).read()), dtype="float32")
                seconds += len(data) / rate
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nestkit-bench-shards-") as tmp:
        root = Path(tmp)
        train, noise = make_corpus(root / "files", args.utterances)
        tarred = write_nemo_tarred(train, str(root / "served" / "tarred"), SHARD_SIZE, progress=False)
        shar = write_shar(train, str(root / "served" / "shar"), SHARD_SIZE, progress=False)
        servers = [Server(root / "served")] + ([Nginx(root / "served")] if Path(NGINX).exists() else [])
        last = len(tarred.tars) - 1
        try:
            variants = {
                "files": dataset(noise, args.workers, manifest_filepath=[train]),
                "tarred/local": dataset(
                    noise,
                    args.workers,
                    manifest_filepath=[tarred.manifests[0]],
                    is_tarred=True,
                    tarred_audio_filepaths=tarred.tars,
                ),
                "shar/local": dataset(noise, args.workers, shar_path=str(root / "served" / "shar")),
            }
            for server in servers:
                variants[f"tarred/http-{server.name}"] = dataset(
                    noise,
                    args.workers,
                    manifest_filepath=[f"{server.base}/tarred/tarred_audio_manifest.json"],
                    is_tarred=True,
                    tarred_audio_filepaths=f"{server.base}/tarred/audio__OP_0..{last}_CL_.tar",
                )
                variants[f"shar/http-{server.name}"] = dataset(
                    noise,
                    args.workers,
                    shar_path={
                        "cuts": f"{server.base}/shar/cuts._OP_000000..{last:06d}_CL_.jsonl.gz",
                        "recording": f"{server.base}/shar/recording._OP_000000..{last:06d}_CL_.tar",
                    },
                )
            pipelines, loaders = {}, {}
            for name, ds in variants.items():
                cfg = config_from_dict(
                    {"model": {"train_ds": ds}, "nestkit": {"index_cache_dir": str(root / "index-cache")}}
                ).config
                pipelines[name] = build_pipeline(cfg, run_dir=root / "run" / name.replace("/", "-"))
                loaders[name] = pipelines[name].dataloader()
            raws = {"raw/tarred": tarred.tars, "raw/shar": shar.tars}
            first: dict[str, list[str]] = {}
            for name in variants:  # warm: page cache, connections, workers; and the batches must agree
                first[name] = pipeline_pass(pipelines[name], loaders[name], 0)[1]
            for tars in raws.values():
                raw_members(tars)
            assert all(prints == first["files"] for prints in first.values()), "batches differ between variants"
            rates: dict[str, list[float]] = {name: [] for name in [*variants, *raws]}
            per_cpu: dict[str, list[float]] = {name: [] for name in [*variants, *raws]}
            names = [*variants, *raws]
            for r in range(args.repeats):
                # each pass in another order: a machine that gets busier or quieter favours no variant
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    start, cpu = time.perf_counter(), cpu_seconds()
                    if name in raws:
                        seconds = raw_members(raws[name])
                    else:
                        seconds, _ = pipeline_pass(pipelines[name], loaders[name], r + 1)
                    rates[name].append(seconds / (time.perf_counter() - start))
                    per_cpu[name].append(seconds / max(cpu_seconds() - cpu, 1e-9))
                print(
                    f"pass {r + 1}: "
                    + ", ".join(f"{k} {v[-1]:,.0f} ({per_cpu[k][-1]:,.0f})" for k, v in rates.items()),
                    flush=True,
                )
        finally:
            for server in servers:
                server.stop()
    median = {name: statistics.median(v) for name, v in rates.items()}
    cpu = {name: statistics.median(v) for name, v in per_cpu.items()}

    def ratios_of(m: dict[str, float]) -> dict[str, float]:
        out = {
            "tarred/local vs files": m["tarred/local"] / m["files"],
            "shar/local vs files": m["shar/local"] / m["files"],
            "tarred/local vs raw/tarred": m["tarred/local"] / m["raw/tarred"],
            "shar/local vs raw/shar": m["shar/local"] / m["raw/shar"],
        }
        for name in m:
            if "/http-" in name:
                local = name.split("/")[0] + "/local"
                out[f"{name} vs {local}"] = m[name] / m[local]
        return out

    ratios, cpu_ratios = ratios_of(median), ratios_of(cpu)
    print(
        f"\naudio-seconds per second of wall time, and per CPU-second of every process involved (the pipeline,"
        f" its workers, the server), medians of {args.repeats} (workers={args.workers}; batches bit-identical):"
    )
    print(f"  {'':18s} {'per wall-s':>10s} {'per CPU-s':>10s}")
    for name in median:
        print(f"  {name:18s} {median[name]:10,.0f} {cpu[name]:10,.0f}")
    print(f"  {'ratios':36s} {'wall':>6s} {'CPU':>6s}")
    for name in ratios:
        print(f"  {name:36s} {ratios[name]:6.2f} {cpu_ratios[name]:6.2f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"args": vars(args), "rates": rates, "per_cpu": per_cpu, "ratios": ratios, "cpu_ratios": cpu_ratios},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
