"""Plot a run's learning curve from its own CSV log: loss and masked-token accuracy, train and validation.

    pip install -e ".[report]"          # matplotlib (make demo's environment has it)
    python tools/plot_demo_curve.py [RUN_DIR] [-o OUT.png]

RUN_DIR defaults to runs/nest-demo (what `make demo` trains), OUT to RUN_DIR/learning_curve.png.
Reads every csv/version_*/metrics.csv of the run (a resumed run adds a version) and the run's
resolved config.yaml (for the chance level, 1 / num_classes). The README's figure is this
script's output for the demo run (`-o docs/images/demo_curve.png`), so re-running both keeps the
figure true.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from nestkit.config import load_config  # noqa: E402
from nestkit.runfolder.layout import config_path, learning_curve_path  # noqa: E402
from nestkit.runfolder.metrics import metrics_files, read_metrics  # noqa: E402

SMOOTHING_POINTS = 5  # train metrics are single batches: also drawn as a running mean of this many logged points
FIGURE_INCHES = (10.0, 3.8)
DPI = 110


def running_mean(values: list[float], width: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def plot(run_dir: Path, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = read_metrics(metrics_files(run_dir))
    if not metrics:
        raise SystemExit(f"run {run_dir}: no csv/version_*/metrics.csv (expected a run folder of `nestkit train`)")
    cfg = load_config(config_path(run_dir)).config
    chance = 1.0 / cfg.model.num_classes
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=FIGURE_INCHES)
    summary = []
    for ax, metric, label in ((loss_ax, "loss", "masked-token loss (nats)"), (acc_ax, "acc", "masked-token accuracy")):
        steps, values = steps_done(metrics, f"train_{metric}")
        ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=1)
        ax.plot(steps, running_mean(values, SMOOTHING_POINTS), color="tab:blue", label="train (running mean)")
        val_steps, val_values = steps_done(metrics, f"val_{metric}")
        ax.plot(val_steps, val_values, "o-", color="tab:orange", label="validation")
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if val_values:
            summary.append(f"val_{metric} {val_values[0]:.3g} -> {val_values[-1]:.3g}")
    # where an untrained model starts: uniform guessing, loss ln(C), accuracy 1/C
    loss_ax.axhline(
        math.log(cfg.model.num_classes), color="gray", linestyle="--", label=f"guessing (ln {cfg.model.num_classes})"
    )
    acc_ax.axhline(chance, color="gray", linestyle="--", label=f"chance (1/{cfg.model.num_classes})")
    acc_ax.set_ylim(bottom=0)
    loss_ax.legend()
    acc_ax.legend()
    fig.suptitle(f"{cfg.name}: {last_step(metrics) + 1} steps, {cfg.model.num_classes} classes", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return f"wrote {out}: " + ", ".join(summary)


def steps_done(metrics: dict[str, list[tuple[int, float]]], name: str) -> tuple[list[int], list[float]]:
    """(x, y) of one metric; Lightning's `step` column is 0-based, x is the optimiser steps done."""
    points = metrics.get(name, [])
    return [step + 1 for step, _ in points], [value for _, value in points]


def last_step(metrics: dict[str, list[tuple[int, float]]]) -> int:
    return max(step for points in metrics.values() for step, _ in points)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", default=str(ROOT / "runs" / "nest-demo"))
    parser.add_argument("-o", "--out", help="the PNG to write (default: RUN_DIR/learning_curve.png)")
    args = parser.parse_args()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print('matplotlib is missing: pip install -e ".[report]"', file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir)
    print(plot(run_dir, Path(args.out) if args.out else learning_curve_path(run_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
