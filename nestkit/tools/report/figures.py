"""The run's figures: training curves with the incidents on them, per-rank step time, the
quarantine by category, the incident timeline, epoch progress. Each function returns a matplotlib
Figure (Agg) or None when the run has nothing to draw yet."""

from __future__ import annotations

from collections import Counter

from nestkit.tools.report.events import KINDS, Event
from nestkit.tools.report.plotting import COLORS, new_figure
from nestkit.tools.report.ranks import RankSteps
from nestkit.tools.report.run_data import RunData

CURVES = (  # (panel title, [(metric, label, colour)], y label)
    ("loss", [("train_loss", "train", COLORS["train"]), ("val_loss", "validation", COLORS["validation"])], "loss"),
    ("learning rate", [("lr", "lr", COLORS["train"])], "lr"),
    ("masked frames per micro-batch", [("masked_frames", "masked frames", COLORS["train"])], "frames"),
    (
        "throughput (over wall time, data loading included)",
        [("audio_seconds_per_second", "audio s / s", COLORS["train"])],
        "audio seconds per second",
    ),
)
INCIDENT_KINDS_ON_CURVES = ("stall", "anomaly", "straggler", "resume", "world size")


def _mark_events(ax, events: list[Event]) -> None:
    for event in events:
        if event.step is not None and event.kind in INCIDENT_KINDS_ON_CURVES:
            ax.axvline(event.step, color=COLORS[event.kind], linestyle="--", linewidth=1.2, alpha=0.8)


def training_figure(data: RunData, events: list[Event], batch_loss: list[tuple[int, float]]):
    """Loss (train, validation), lr, masked frames, throughput over steps; incidents as dashed lines.
    `batch_loss`: rank 0's logged loss per step beyond the CSV's last step (Lightning writes its CSV
    every 100 steps; the batch log is written every step)."""
    if not data.metrics and not batch_loss:
        return None
    from matplotlib.lines import Line2D

    figure = new_figure(12, 6.5)
    axes = figure.subplots(2, 2, sharex=True).ravel()
    for ax, (title, series, ylabel) in zip(axes, CURVES):
        drawn = False
        for name, label, color in series:
            points = data.series(name)
            if points:
                steps, values = zip(*points)
                style = {"marker": "o", "markersize": 4} if name == "val_loss" else {"linewidth": 1.2}
                ax.plot(steps, values, color=color, label=label, **style)
                drawn = True
        if title == "loss" and batch_loss:
            steps, values = zip(*batch_loss)
            ax.plot(steps, values, color=COLORS["train"], linestyle=":", label="train (batch log, not in CSV yet)")
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not logged yet", ha="center", va="center", transform=ax.transAxes, color="gray")
        _mark_events(ax, events)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        if drawn and title == "loss":
            ax.legend(fontsize=8)
    for ax in axes[2:]:
        ax.set_xlabel("step")
    kinds = sorted({e.kind for e in events if e.kind in INCIDENT_KINDS_ON_CURVES}, key=KINDS.index)
    if kinds:
        handles = [Line2D([], [], color=COLORS[k], linestyle="--", label=k) for k in kinds]
        figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, title="incidents")
    return figure


def step_time_figure(groups: list[RankSteps], by_segment: bool):
    """Left: each rank's step time split into data wait, compute and waits for peers (mean per step).
    Right: data wait per step over the run, one line per rank (and segment, when the run has several)."""
    groups = [g for g in groups if g.records]
    if not groups:
        return None
    figure = new_figure(12, 1.6 + 0.45 * len(groups) + 1.5)
    left, right = figure.subplots(1, 2, width_ratios=(1, 1.3))
    labels = [f"rank {g.rank}" + (f"\n{g.span}" if by_segment else "") for g in groups]
    at = [0.0] * len(groups)
    for part, label in (("data_wait_s", "data wait"), ("compute_s", "compute"), ("peer_wait_s", "peer wait")):
        means = [g.total(part) / len(g.records) for g in groups]
        left.barh(labels, means, left=at, color=COLORS[label], label=label)
        at = [a + m for a, m in zip(at, means)]
    for y, g in enumerate(groups):
        left.text(at[y], y, f"  data {g.share('data_wait_s'):.0%}", va="center", fontsize=8)
    left.invert_yaxis()
    left.tick_params(axis="y", labelsize=8)
    left.set_xlabel("seconds per step (mean)")
    left.set_title("where each rank's step time goes", fontsize=10)
    left.legend(fontsize=8, loc="lower right")
    left.set_xlim(0, max(at) * 1.3 if max(at) > 0 else 1)
    ranks = sorted({g.rank for g in groups})
    colors = {rank: f"C{i % 10}" for i, rank in enumerate(ranks)}
    for g in groups:
        first = g is next(o for o in groups if o.rank == g.rank)
        right.plot(
            g.steps,
            g.values("data_wait_s"),
            color=colors[g.rank],
            linewidth=1.0,
            marker=".",
            markersize=3,
            label=f"rank {g.rank}" if first else None,
        )
    right.set_title("data wait per step", fontsize=10)
    right.set_xlabel("step")
    right.set_ylabel("seconds")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    return figure


def quarantine_figure(records: list[dict]):
    """Replaced samples and noises by category (bars split by kind)."""
    if not records:
        return None
    counts = Counter((str(r.get("category")), str(r.get("kind", "audio"))) for r in records)
    categories = sorted({c for c, _ in counts}, key=lambda c: -sum(n for (cc, _), n in counts.items() if cc == c))
    figure = new_figure(8, 1.2 + 0.4 * len(categories))
    ax = figure.subplots()
    at = [0] * len(categories)
    for kind, color in (("audio", COLORS["train"]), ("noise", COLORS["noise"])):
        values = [counts.get((c, kind), 0) for c in categories]
        if any(values):
            ax.barh(categories, values, left=at, color=color, label="utterances" if kind == "audio" else "noises")
            at = [a + v for a, v in zip(at, values)]
    for y, total in enumerate(at):
        ax.text(total, y, f" {total}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("records (each replaced by a substitute, or a noise by another)")
    ax.set_title("quarantine by category", fontsize=10)
    ax.legend(fontsize=8)
    return figure


def timeline_figure(events: list[Event], last_step: int | None):
    """One lane per kind of incident, markers at their steps, labels beside them."""
    placed = [e for e in events if e.step is not None]
    if not placed:
        return None
    lanes = [k for k in KINDS if any(e.kind == k for e in placed)]
    figure = new_figure(12, 1.2 + 0.55 * len(lanes))
    ax = figure.subplots()
    for y, kind in enumerate(lanes):
        mine = [e for e in placed if e.kind == kind]
        ax.scatter([e.step for e in mine], [y] * len(mine), color=COLORS[kind], s=60, zorder=3, marker="D")
        if kind != "bad data":
            for e in mine:
                ax.annotate(e.title, (e.step, y), xytext=(6, 6), textcoords="offset points", fontsize=8)
    end = max([float(last_step or 0), *(float(e.step) for e in placed if e.step is not None)])
    ax.set_xlim(-0.5, end * 1.08 + 1)
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_ylim(len(lanes) - 0.4, -0.6)
    ax.set_xlabel("step")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("incidents", fontsize=10)
    return figure


def epochs_figure(batches: dict[int, list[dict]], epoch_lengths: dict[int, int]):
    """Data position over steps: epochs done, as a fraction when the epoch's length is known."""
    records = batches.get(min(batches)) if batches else None
    if not records:
        return None
    steps, position = [], []
    for record in records:
        epoch, consumed = record.get("epoch"), record.get("consumed_after")
        if epoch is None:
            continue
        length = epoch_lengths.get(epoch)
        steps.append(record["step"])
        position.append(epoch + (min(consumed, length) / length if consumed is not None and length else 0.0))
    if not steps:
        return None
    figure = new_figure(12, 2.8)
    ax = figure.subplots()
    ax.plot(steps, position, color=COLORS["train"], linewidth=1.5, drawstyle="steps-post")
    for epoch in range(int(min(position)), int(max(position)) + 1):
        ax.axhline(epoch, color="gray", linewidth=0.6, alpha=0.5)
    ax.set_xlabel("step")
    ax.set_ylabel("epochs of data consumed" if epoch_lengths else "epoch")
    ax.set_title("epoch progress", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return figure
