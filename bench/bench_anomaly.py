"""What the anomaly watch costs a healthy training step of the Small NEST model.

    python bench/bench_anomaly.py [--steps 8] [--warmup 2] [--loss-calls 50] [--json bench/out/bench_anomaly.json]

The training step is bench_model.py's (NeMo's "Small" NEST, 8 utterances of 10 s down to 5 s,
2 threads). Per step, the work the anomaly watch adds is timed directly, on the production code:

* the per-utterance loss and frame count inside `masked_token_loss` (timed against the same
  function without them, alternating calls on the step's real log-probs);
* `row_values` (the host copy of the per-utterance values) and the batch log's extra fields;
* AnomalyWatch's hooks of a step: on_train_batch_start, on_after_backward, on_before_optimizer_step
  (global gradient norm, the step vector, the detector's three windows), with `action: warn` and
  with `action: skip` (which also copies the BatchNorm statistics before each step);

and, end to end, steps with the hooks alternate with steps without them (ABAB in one process, so
the shared machine's load hits both alike). One rank: the one all-reduce of a 2 x world + 5 float64
vector per step is not in these figures (a few tens of microseconds on NCCL or gloo).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
UNDISTURBED = 1.1  # a step within 10% of the fastest plain step ran undisturbed
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from bench_model import SMALL, THREADS, synthetic_batch  # noqa: E402


def loss_without_rows(masks, log_probs, tokens, combine_time_steps, mask_threshold):
    """masked_token_loss without the per-utterance fields (accuracy included): the reference for their cost."""
    from nestkit.model.loss import loss_frame_mask

    if log_probs.dim() == 3:
        log_probs = log_probs.unsqueeze(-1)
    if tokens.dim() == 2:
        tokens = tokens.unsqueeze(-1)
    selected = loss_frame_mask(masks, combine_time_steps, mask_threshold)
    frames = min(selected.shape[1], log_probs.shape[1], tokens.shape[1])
    selected, log_probs, tokens = selected[:, :frames], log_probs[:, :frames], tokens[:, :frames]
    target_log_probs = log_probs.gather(2, tokens.unsqueeze(2)).squeeze(2)
    count = selected.sum()
    total = torch.where(selected[:, :, None], target_log_probs, 0.0).sum()
    loss = -total / (count.clamp(min=1) * tokens.shape[-1])
    with torch.no_grad():  # the accuracy, which is not the watch's
        correct = ((log_probs.argmax(dim=2) == tokens) & selected[:, :, None]).sum()
    return loss, count, correct


def stubs(model, action: str):
    from nestkit.config import config_from_dict
    from nestkit.training.anomaly import AnomalyWatch

    cfg = config_from_dict({"model": {"encoder": SMALL}, "nestkit": {"anomaly": {"action": action}}}).config
    watch = AnomalyWatch(cfg, REPO / "bench" / "out" / "anomaly-run", notify=lambda _: None)
    trainer = SimpleNamespace(global_step=0, world_size=1, global_rank=0, callbacks=[])  # no setup: no writer
    module = SimpleNamespace(
        model=model, last_rows=None, last_position=None, device=torch.device("cpu"), stall_watch=None
    )
    return watch, trainer, module


def run(steps: int, warmup: int, loss_calls: int) -> dict:
    from nestkit.config import config_from_dict
    from nestkit.core.rng import torch_generator
    from nestkit.model.loss import masked_token_loss
    from nestkit.model.nest import NestModel
    from nestkit.model.schedule import build_optimizer, build_scheduler
    from nestkit.runfolder.records import dumps_line
    from nestkit.training.anomaly import ROW_DIGITS, rounded, row_values

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"encoder": SMALL}}).config
    model = NestModel(cfg.model).train()
    optimizer = build_optimizer(model, cfg.model.optim)
    scheduler = build_scheduler(optimizer, cfg.model.optim)
    batch = synthetic_batch()
    watches = {action: stubs(model, action) for action in ("warn", "skip")}
    fake_batch = SimpleNamespace(position=None, records=[], fingerprint="", cut_ids=[])
    step_s = {"plain": [], "warn": [], "skip": []}
    hooks_s = {"warn": [], "skip": []}
    rows_s = []
    out = None
    order = ["plain", "warn", "plain", "skip"]
    for step in range(warmup + steps * len(order)):
        mode = order[step % len(order)]
        start = time.perf_counter()
        hooks = 0.0
        if mode != "plain":
            watch, trainer, module = watches[mode]
            trainer.global_step = step
            t = time.perf_counter()
            watch.on_train_batch_start(trainer, module, fake_batch, 0)
            hooks += time.perf_counter() - t
        out = model(*batch, apply_mask=True, generator=torch_generator(0, "bench", step))
        result = model.loss(out)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        float(result.loss.detach())  # the module's own per-step copy of the loss value
        if mode != "plain":
            t = time.perf_counter()
            module.last_rows = row_values(result)
            record = {"row_loss": rounded(module.last_rows[2]), "row_frames": module.last_rows[3]}
            watch.on_after_backward(trainer, module)
            watch.on_before_optimizer_step(trainer, module, optimizer)
            record["grad_norm"] = round(watch.grad_norm, ROW_DIGITS)
            dumps_line(record)
            hooks += time.perf_counter() - t
            rows_s.append(hooks)
        optimizer.step()
        scheduler.step()
        elapsed = time.perf_counter() - start
        if step >= warmup:
            step_s[mode].append(elapsed)
            if mode != "plain":
                hooks_s[mode].append(hooks)
    # the per-utterance part of the loss, on the last step's real tensors
    args = (out.masks, out.log_probs.detach(), out.tokens)
    extra = (cfg.model.loss.combine_time_steps, cfg.model.loss.mask_threshold)
    with_rows, without_rows = [], []
    for _ in range(loss_calls):
        t = time.perf_counter()
        masked_token_loss(*args, None, *extra)
        with_rows.append(time.perf_counter() - t)
        t = time.perf_counter()
        loss_without_rows(*args, *extra)
        without_rows.append(time.perf_counter() - t)
    plain = statistics.median(step_s["plain"])
    loss_extra = statistics.median(with_rows) - statistics.median(without_rows)
    report = {
        "torch": torch.__version__,
        "threads": THREADS,
        "params": sum(p.numel() for p in model.parameters()),
        "step_s": step_s,
        "hooks_s": hooks_s,
        "step_median_s": {k: statistics.median(v) for k, v in step_s.items()},
        "hooks_median_s": {k: statistics.median(v) for k, v in hooks_s.items()},
        "loss_with_rows_median_s": statistics.median(with_rows),
        "loss_without_rows_median_s": statistics.median(without_rows),
    }
    for action in ("warn", "skip"):
        direct = report["hooks_median_s"][action] + max(loss_extra, 0.0)
        report[f"direct_overhead_{action}"] = direct / plain
        report[f"end_to_end_ratio_{action}"] = report["step_median_s"][action] / plain
    # On a shared machine other jobs stretch some steps many times over: the steps within 10% of
    # the fastest plain step are the undisturbed ones, and their medians are quoted too.
    fastest = min(step_s["plain"])
    calm = {k: [t for t in v if t < UNDISTURBED * fastest] for k, v in step_s.items()}
    calm_hooks = {k: [h for t, h in zip(step_s[k], hooks_s[k]) if t < UNDISTURBED * fastest] for k in hooks_s}
    report["undisturbed_step_median_s"] = {k: statistics.median(v) for k, v in calm.items() if v}
    report["undisturbed_hooks_median_s"] = {k: statistics.median(v) for k, v in calm_hooks.items() if v}
    report["undisturbed_counts"] = {k: len(v) for k, v in calm.items()}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--loss-calls", type=int, default=50, help="alternating loss calls, with and without rows")
    parser.add_argument("--json", type=Path, default=REPO / "bench/out/bench_anomaly.json")
    args = parser.parse_args()
    report = run(args.steps, args.warmup, args.loss_calls)
    plain = report["step_median_s"]["plain"]
    print(f"Small training step, median of {args.steps} (no anomaly work): {plain:.3f} s")
    print(
        f"per-utterance loss fields in masked_token_loss: "
        f"{(report['loss_with_rows_median_s'] - report['loss_without_rows_median_s']) * 1e6:+.0f} us "
        f"({report['loss_without_rows_median_s'] * 1e3:.2f} -> {report['loss_with_rows_median_s'] * 1e3:.2f} ms per call)"
    )
    for action in ("warn", "skip"):
        print(
            f"action {action}: hooks + row copy + log fields {report['hooks_median_s'][action] * 1e3:.2f} ms per step; "
            f"direct overhead {report[f'direct_overhead_{action}']:.3%}; "
            f"end to end (ABAB medians) {report[f'end_to_end_ratio_{action}'] - 1:+.2%}"
        )
    calm_plain = report["undisturbed_step_median_s"].get("plain")
    for action, hooks in report["undisturbed_hooks_median_s"].items():
        print(
            f"undisturbed steps only ({report['undisturbed_counts'][action]} {action}, "
            f"{report['undisturbed_counts']['plain']} plain): plain {calm_plain:.3f} s, {action} hooks "
            f"{hooks * 1e3:.2f} ms = {hooks / calm_plain:.3%}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
