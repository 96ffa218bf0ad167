"""Model benchmarks: one NEST training step (Small size) and the quantizer against NeMo's algorithm.

    python bench/bench_model.py [--steps 6] [--warmup 2] [--quantizer-calls 7] [--json bench/out/bench_model.json]

(a) training step: NeMo's "Small" NEST (d_model 176, 4 heads, 16 layers, kernel 9, 8192 classes,
    everything else as nest_fast-conformer.yaml) on 8 utterances of 10 s down to 5 s, 2 threads:
    preprocessor (clean + noisy), quantizer, masking, encoder, decoder, loss, backward, AdamW step.
    Median over the timed steps after warm-up; peak RSS of the process, run in a fresh subprocess.
(b) quantizer alone at B=8, T=1000 frames, 80 features, 8 stacked steps, 8192 classes: nestkit's
    matrix-product search against NeMo's float64 (B, T', books, D, V) broadcast (re-implemented
    here, no NeMo import), side by side: times from alternating calls in one process (so the
    shared machine's load hits both alike; the ratio is the median of per-pair ratios), peak
    extra resident memory of one call in a fresh process each, and the tokens compared.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
THREADS = 2
SAMPLE_RATE = 16000
DURATIONS_S = np.linspace(10.0, 5.0, 8)  # 8 utterances, 10 s down to 5 s
SMALL = {"d_model": 176, "n_heads": 4, "n_layers": 16, "conv_kernel_size": 9}
QUANT_BATCH, QUANT_FRAMES, QUANT_FEATURES, QUANT_STEPS, QUANT_CLASSES = 8, 1000, 80, 8, 8192
MIB = 1024 * 1024


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status: no {field} line (expected Linux)")


def peak_extra_bytes(call) -> int:
    """Resident memory a call adds at its peak: Linux's high-water mark, reset just before the call."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    before = _status_bytes("VmRSS")
    call()
    return _status_bytes("VmHWM") - before


def synthetic_batch(seed: int = 0) -> tuple[torch.Tensor, ...]:
    rng = np.random.Generator(np.random.PCG64(seed))
    lengths = (DURATIONS_S * SAMPLE_RATE).astype(np.int64)
    audio = np.zeros((len(lengths), lengths.max()), np.float32)
    for row, length in enumerate(lengths):
        t = np.arange(length) / SAMPLE_RATE
        audio[row, :length] = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) * (1 + np.sin(2 * np.pi * 4 * t))
        audio[row, :length] += 0.01 * rng.standard_normal(length)
    noisy = audio + 0.03 * rng.standard_normal(audio.shape).astype(np.float32) * (
        np.arange(audio.shape[1]) < lengths[:, None]
    )
    lengths_t = torch.from_numpy(lengths)
    return torch.from_numpy(audio), lengths_t, torch.from_numpy(noisy.astype(np.float32)), lengths_t.clone()


def run_training_steps(steps: int, warmup: int) -> dict:
    """Runs in a fresh process (see main): times full training steps of the Small model."""
    from nestkit.config import config_from_dict
    from nestkit.core.rng import torch_generator
    from nestkit.model.nest import NestModel
    from nestkit.model.schedule import build_optimizer, build_scheduler

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"encoder": SMALL}}).config
    model = NestModel(cfg.model).train()
    optimizer = build_optimizer(model, cfg.model.optim)
    scheduler = build_scheduler(optimizer, cfg.model.optim)
    batch = synthetic_batch()
    times, losses, frames = [], [], []
    for step in range(warmup + steps):
        start = time.perf_counter()
        out = model(*batch, apply_mask=True, generator=torch_generator(0, "bench", step))
        result = model.loss(out)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        scheduler.step()
        elapsed = time.perf_counter() - start
        if step >= warmup:
            times.append(elapsed)
        losses.append(float(result.loss))
        frames.append(int(result.num_masked_frames))
    return {
        "step_s": times,
        "step_median_s": statistics.median(times),
        "peak_rss_bytes": peak_rss_bytes(),
        "losses": losses,
        "loss_frames": frames,
        "params": sum(p.numel() for p in model.parameters()),
    }


def quantizer_inputs():
    from nestkit.config import QuantizerConfig
    from nestkit.model.quantizer import RandomProjectionQuantizer

    torch.manual_seed(0)
    cfg = QuantizerConfig(
        feat_in=QUANT_FEATURES,
        code_dim=16,
        num_books=1,
        num_classes=QUANT_CLASSES,
        combine_time_steps=QUANT_STEPS,
        squeeze_single=False,
    )
    quantizer = RandomProjectionQuantizer(cfg)
    features = torch.randn(QUANT_BATCH, QUANT_FEATURES, QUANT_FRAMES)
    return quantizer, features


def nemo_broadcast_tokens(quantizer, features: torch.Tensor) -> torch.Tensor:
    """NeMo 2.6.2's l2 search: a float64 (B, T', books, code_dim, V) difference tensor, norm, argmin."""
    x = quantizer.project(features)  # (B, T', books, code_dim) float32 unit vectors
    diff = x.unsqueeze(-1) - quantizer.codebooks.transpose(1, 2).unsqueeze(0).unsqueeze(0)
    return diff.norm(dim=-2).argmin(dim=-1)


def quantizer_searches():
    quantizer, features = quantizer_inputs()
    return features, {"nestkit": quantizer, "nemo": lambda f: nemo_broadcast_tokens(quantizer, f)}


def run_quantizer_times(calls: int) -> dict:
    """Runs in a fresh process: both searches called alternately, so load on the shared machine
    hits both alike; per-call times, medians, the median of per-pair ratios, tokens compared."""
    torch.set_num_threads(THREADS)
    features, searches = quantizer_searches()
    times: dict[str, list[float]] = {name: [] for name in searches}
    with torch.no_grad():
        tokens = {name: search(features) for name, search in searches.items()}  # warm-up
        for _ in range(calls):
            for name, search in searches.items():
                start = time.perf_counter()
                search(features)
                times[name].append(time.perf_counter() - start)
    ratios = [nemo / ours for ours, nemo in zip(times["nestkit"], times["nemo"])]
    return {
        "times_s": times,
        "median_s": {name: statistics.median(values) for name, values in times.items()},
        "median_pair_ratio": statistics.median(ratios),
        "tokens_identical": torch.equal(tokens["nestkit"], tokens["nemo"].reshape(tokens["nestkit"].shape)),
    }


def run_quantizer_memory(method: str) -> dict:
    """Runs in a fresh process: resident memory one full call adds at its peak."""
    torch.set_num_threads(THREADS)
    features, searches = quantizer_searches()
    search = searches[method]
    with torch.no_grad():
        search(features[:1, :, :QUANT_STEPS])  # warm-up on one step: kernels and thread pool, little memory
        # the first full call: later calls reuse the heap the first one left, which RSS cannot see
        return {"peak_extra_bytes": peak_extra_bytes(lambda: search(features))}


def in_subprocess(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--quantizer-calls", type=int, default=7)
    parser.add_argument("--json", type=Path, default=REPO / "bench/out/bench_model.json")
    parser.add_argument("--child", choices=["step", "quantizer-times", "nestkit", "nemo"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "step":
        print(json.dumps(run_training_steps(args.steps, args.warmup)))
        return
    if args.child == "quantizer-times":
        print(json.dumps(run_quantizer_times(args.quantizer_calls)))
        return
    if args.child:
        print(json.dumps(run_quantizer_memory(args.child)))
        return

    step = in_subprocess("--child", "step", "--steps", str(args.steps), "--warmup", str(args.warmup))
    times = in_subprocess("--child", "quantizer-times", "--quantizer-calls", str(args.quantizer_calls))
    memory = {name: in_subprocess("--child", name)["peak_extra_bytes"] for name in ("nestkit", "nemo")}
    ours_s, nemo_s = times["median_s"]["nestkit"], times["median_s"]["nemo"]
    rows = [
        ("training step, Small, 8 x 10..5 s (median)", f"{step['step_median_s']:.3f} s", ""),
        ("training step peak RSS", f"{step['peak_rss_bytes'] / 2**30:.2f} GiB", ""),
        (
            "quantizer nestkit (median per call, peak extra)",
            f"{ours_s * 1e3:.1f} ms",
            f"{memory['nestkit'] / MIB:.1f} MiB",
        ),
        ("quantizer NeMo float64 broadcast", f"{nemo_s * 1e3:.1f} ms", f"{memory['nemo'] / MIB:.0f} MiB"),
        (
            "quantizer NeMo / nestkit (alternating calls)",
            f"{times['median_pair_ratio']:.0f}x time",
            f"{memory['nemo'] / max(memory['nestkit'], 1):.0f}x memory",
        ),
        ("quantizer tokens identical", str(times["tokens_identical"]), ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, extra in rows:
        print(f"{name:<{width}}  {value:>14}  {extra}")
    report = {
        "torch": torch.__version__,
        "threads": THREADS,
        "training_step": step,
        "quantizer": {"times": times, "peak_extra_bytes": memory},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
