"""Cost of heartbeats, the stall watchdog and worker status slots, on the demo config.

    python bench/bench_heartbeat.py [--steps 60] [--repeats 5] [--json OUT]

Needs the demo audio (python manifests/make_demo_audio.py). Five measurements:
  step     the heartbeat calls the training thread makes in one DDP step, exactly as StallWatch
           and WatchedDataLoader make them (fetch, step start, buffer-broadcast and all-reduce
           collectives, backward, optimizer, step end), 200,000 times;
  hook     DDP backward with DDP's built-in C++ all-reduce, PyTorch's default Python all-reduce hook
           and nestkit's phase-marking hook (gloo, world size 1, a model with the demo model's
           parameter count), 4,000 backwards each, interleaved in 20 rounds;
  worker   what a DataLoader worker adds per batch: worker_status begin/loading/loaded/context/end
           into a real memory-mapped slot, for the demo batch (4 utterances + 4 noise reads);
  writer   one Heartbeat.write() (snapshot + JSON + temp file + rename) with the demo's in-flight
           batches: the background thread does this once per heartbeat_interval_s (1 s);
  train    the demo config trained in this process for --steps steps with and without StallWatch
           (ABBA order, --repeats times each): median step time from the batch log, the first 10
           steps left out.
The overhead on the training process is (step + hook) per step plus writer per second, relative to
the demo's median step time; the worker figure is relative to the time a worker takes per batch.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "manifests" / "demo" / "config.yaml"


def per_call(fn, n: int) -> float:
    started = time.perf_counter()
    fn(n)
    return (time.perf_counter() - started) / n


def bench_step(run_dir: Path, n: int) -> float:
    """Seconds of heartbeat work per training step on the training thread."""
    from nestkit.monitor.heartbeat import Heartbeat

    hb = Heartbeat(run_dir, 0, 2)
    records = [{"cut_id": f"c{i}", "path": f"/data/c{i}.wav", "manifest": "train.json", "line": i} for i in range(4)]

    def steps(count: int) -> None:
        for i in range(count):
            hb.set_phase("fetch")  # WatchedDataLoader.__next__
            hb.mark_fetched((0, i), 0.001)
            hb.mark_step_start(i, (0, i), records)  # on_train_batch_start
            hb.enter_collective("buffer broadcast")
            hb.set_phase("forward")  # forward pre-hook
            hb.set_phase("backward")  # on_before_backward
            hb.enter_collective("all-reduce")  # comm hook, last bucket
            hb.set_phase("optimizer")  # on_after_backward
            hb.mark_step_end(i + 1)  # on_train_batch_end
            hb.enter_collective("step-start broadcast")

    steps(1000)
    return per_call(steps, n)


def bench_hook(params: int, iterations: int) -> dict[str, float]:
    """Seconds per DDP backward (gloo, world size 1, `params` parameters) with DDP's built-in C++
    all-reduce, PyTorch's default Python all-reduce hook, and nestkit's phase-marking hook."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from nestkit.monitor.collective import register
    from nestkit.monitor.heartbeat import Heartbeat

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29581")
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.manual_seed(0)
    width = int((params / 2) ** 0.5)

    def model():
        return torch.nn.parallel.DistributedDataParallel(
            torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Linear(width, width))
        )

    arms = {"builtin": model(), "python_default": model(), "nestkit": model()}
    arms["python_default"].register_comm_hook(None, allreduce_hook)
    register(arms["nestkit"], Heartbeat(tempfile.mkdtemp(), 0, 1))
    x = torch.randn(2, width)
    times: dict[str, list[float]] = {name: [] for name in arms}
    rounds = 20
    for _ in range(rounds):
        for name, m in arms.items():
            started = time.perf_counter()
            for _ in range(iterations // rounds):
                m(x).sum().backward()
            times[name].append((time.perf_counter() - started) / (iterations // rounds))
    dist.destroy_process_group()
    return {name: statistics.median(values) for name, values in times.items()}


def bench_worker(run_dir: Path, n: int, utterances: int = 4, noises: int = 4) -> float:
    """Seconds a worker spends on its status slot per batch."""
    from nestkit.debug import worker_status

    worker_status.install(worker_status.slot_path(run_dir, 0, 0), rank=0, worker=0)
    path = "/work/data/audio/utt0094.wav"

    def batches(count: int) -> None:
        for i in range(count):
            worker_status.begin_batch(0, i)
            for j in range(utterances):
                worker_status.loading(f"utt{j}-L{j}", path, "/work/data/train.json", j)
                worker_status.loaded()
            worker_status.set_context("augmenting")
            for j in range(noises):
                worker_status.loading(f"noise{j}-L{j}", path, "/work/data/noise.json", j)
                worker_status.loaded()
            worker_status.end_batch()

    batches(100)
    cost = per_call(batches, n)
    worker_status.uninstall()
    return cost


def bench_writer(run_dir: Path, n: int) -> float:
    """Seconds per Heartbeat.write() with the demo's stream and in-flight batches."""
    from nestkit.config import load_config
    from nestkit.data.pipeline import build_pipeline
    from nestkit.data.sampler import TrainingStream
    from nestkit.monitor.heartbeat import Heartbeat

    cfg = load_config(DEMO, []).config
    stream = TrainingStream(build_pipeline(cfg, "train", 0, 2).planner, rank=0, world_size=2)
    it = iter(stream)
    for _ in range(6):  # Lightning's one + num_workers x prefetch_factor = 5 in flight, and the trained one
        next(it)
    hb = Heartbeat(run_dir, 0, 2)
    hb.stream = stream
    hb.mark_step_start(0, (0, 0), [])
    hb.write()
    return per_call(lambda count: [hb.write() for _ in range(count)], n)


def bench_train(steps: int, repeats: int, out: Path) -> dict[str, list[float]]:
    """Median step time of the demo, trained in this process with and without StallWatch."""
    from pytorch_lightning.callbacks import Callback

    import nestkit.training.run as training
    from nestkit.config import load_config
    from nestkit.runfolder.batch_log import read_batch_log

    class NoWatch(Callback):  # the "off" arm: no heartbeat, no watchdog, a plain DataLoader iterator
        def __init__(self, *args):
            pass

        def close(self, error=None):
            pass

    real = training.StallWatch
    medians: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(repeats):
        for arm in ("off", "on") if r % 2 == 0 else ("on", "off"):  # ABBA: no arm always runs second
            training.StallWatch = NoWatch if arm == "off" else real
            name = f"{arm}{r}"
            cfg = load_config(
                DEMO,
                [
                    f"trainer.max_steps={steps}",
                    f"exp_manager.name={name}",
                    f"exp_manager.exp_dir={out}",
                    "trainer.val_check_interval=100000",
                    "exp_manager.create_checkpoint_callback=false",
                    "trainer.enable_progress_bar=false",
                    "trainer.log_every_n_steps=1000",
                ],
            ).config
            training.train(cfg, notify=lambda note: None)
            gc.collect()  # shut the run's persistent DataLoader workers down before the next run
            stamps = [rec["time"] for rec in read_batch_log(out / name, 0)]
            medians[arm].append(statistics.median(b - a for a, b in zip(stamps[10:], stamps[11:])))
    training.StallWatch = real
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (ROOT / "manifests" / "demo" / "audio").is_dir():
        sys.exit("demo audio missing: run python manifests/make_demo_audio.py first")
    # one torch thread throughout: on a small shared machine, OpenMP threads that outnumber the free
    # cores spin and make single runs tens of times slower, which would swamp a 1% effect
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        step = bench_step(tmp, 200_000)
        from nestkit.config import load_config
        from nestkit.model.nest import NestModel

        params = sum(p.numel() for p in NestModel(load_config(DEMO, []).config.model).parameters() if p.requires_grad)
        hook = bench_hook(params, 4000)
        worker = bench_worker(tmp, 20_000)
        writer = bench_writer(tmp, 2000)
        train = bench_train(args.steps, args.repeats, tmp / "runs")

    step_s = statistics.median(train["on"])
    off_s = statistics.median(train["off"])
    hook_s = hook["nestkit"] - hook["builtin"]
    per_step = step + max(hook_s, 0.0) + writer * step_s  # writer: one write per second of training
    result = {
        "heartbeat_calls_per_step_us": step * 1e6,
        "comm_hook_per_backward_us": hook_s * 1e6,
        "comm_hook_vs_python_default_us": (hook["nestkit"] - hook["python_default"]) * 1e6,
        **{f"ddp_backward_{name}_ms": value * 1e3 for name, value in hook.items()},
        "model_params": params,
        "worker_status_per_batch_us": worker * 1e6,
        "heartbeat_write_ms": writer * 1e3,
        "demo_step_ms_with_watch": [round(v * 1e3, 2) for v in train["on"]],
        "demo_step_ms_without": [round(v * 1e3, 2) for v in train["off"]],
        "demo_median_step_ms": step_s * 1e3,
        "training_overhead_percent": 100 * per_step / step_s,
        "end_to_end_difference_percent": 100 * (step_s - off_s) / off_s,
    }
    for key, value in result.items():
        print(f"{key:36s} {value if isinstance(value, list) else round(value, 4)}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
