"""`nestkit report RUN_DIR`: read the run folder, draw, write one HTML file (and PNGs).

The run's own config (config.yaml in the run folder) opens the training data path when it can
(nestkit.tools.session): epoch lengths for epoch progress, the files behind cut ids, and the batch
of each incident rebuilt exactly as training built it. Without it (manifests moved, another
machine) the report still shows everything the run folder holds, and says what it left out.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nestkit.config import NestConfig, StragglerConfig
from nestkit.core.errors import NestkitError
from nestkit.monitor.stragglers import RankTiming, Straggler, describe_load
from nestkit.runfolder.layout import config_path, is_run_folder
from nestkit.tools.report import figures
from nestkit.tools.report.events import Event, all_events
from nestkit.tools.report.page import Picture, Section, figure, number, paragraph, percent, render, table, text
from nestkit.tools.report.plotting import png_bytes, require_matplotlib
from nestkit.tools.report.ranks import RankSteps, find_stragglers, rank_steps, timing
from nestkit.tools.report.run_data import RunData, read_run

if TYPE_CHECKING:
    from nestkit.tools.session import DebugSession

INCIDENT_BATCHES = 4  # incident batches rebuilt and drawn by default (each loads its audio)
QUARANTINE_ROWS_SHOWN = 200


@dataclass
class ReportResult:
    html: Path
    pngs: list[Path]
    pictures: list[Picture]
    stragglers: list[str]  # sentences naming each straggler
    notes: list[str] = field(default_factory=list)


@dataclass
class Context:
    """What the run's config opens, when it can: the config and the training data path."""

    cfg: NestConfig | None = None
    session: DebugSession | None = None
    notes: list[str] = field(default_factory=list)

    def resolve(self, cut_id: str) -> dict:
        """cut id -> its file and manifest line (empty when unknown)."""
        if self.session is None:
            return {}
        index = self.session.pipeline.index
        rows = index.find_all(cut_id)
        if not rows:
            return {}
        from nestkit.data.loading import cut_path

        cut = index.cut(rows[0])
        custom = cut.custom or {}
        return {"path": cut_path(cut), "manifest": custom.get("manifest"), "line": custom.get("line")}

    def epoch_lengths(self, epochs: set[int]) -> dict[int, int]:
        if self.session is None:
            return {}
        return {e: self.session.pipeline.planner.sequence_length(e) for e in sorted(epochs)}


def open_context(run_dir: Path, open_data: bool, timeout_s: float) -> Context:
    context = Context()
    try:
        from nestkit.config import load_config

        context.cfg = load_config(config_path(run_dir)).config
    except NestkitError as exc:
        context.notes.append(f"the run's config could not be read ({exc}); straggler rule: defaults")
        return context
    if not open_data:
        return context
    try:
        from nestkit.tools.positions import world_size_of
        from nestkit.tools.session import DebugSession

        world = world_size_of(context.cfg, run_dir, None)
        context.session = DebugSession(context.cfg, world, run_dir, sample_timeout_s=timeout_s)
    except ImportError as exc:  # the light install: the run folder alone
        context.notes.append(
            f"the run's data was not opened: {exc.name or exc} is not installed (pip install 'nestkit[train]'): "
            "no epoch lengths, files named by cut id, no incident batches"
        )
    except NestkitError as exc:
        context.notes.append(
            f"the run's data could not be opened ({exc}): no epoch lengths, files named by cut id, no incident batches"
        )
    return context


# ------------------------------------------------------------------------------------------------
# sections


def _last(points: list[tuple[int, float]]) -> tuple[int, float] | None:
    return points[-1] if points else None


def summary_section(data: RunData, events: list[Event]) -> Section:
    rows = []
    last = data.last_step
    rows.append(["optimizer steps trained", number(last + 1 if last is not None else None, "steps")])
    sizes = [s.world_size for s in data.segments] or ([len(data.batches)] if data.batches else [])
    rows.append(["ranks", text(" then ".join(str(s) for s in sizes) if sizes else "-")])
    for name, label in (("train_loss", "train_loss"), ("val_loss", "val_loss"), ("lr", "lr")):
        point = _last(data.series(name))
        shown = f"{number(point[1], f'last.{name}')} at step {number(point[0], f'last.{name}.step')}" if point else "-"
        rows.append([f"last {label} (metrics.csv)", shown])
    val = data.series("val_loss")
    if val:
        step, best = min(val, key=lambda p: p[1])
        rows.append(["best val_loss", f"{number(best, 'best.val_loss')} at step {number(step, 'best.val_loss.step')}"])
    speed = sorted(v for _, v in data.series("audio_seconds_per_second"))
    rows.append(
        ["median throughput (audio s / s, rank 0)", number(speed[len(speed) // 2] if speed else None, "throughput")]
    )
    rows.append(["unusable samples and noises (quarantine)", number(len(data.quarantine), "quarantine")])
    kinds = Counter(e.kind for e in events if e.kind != "bad data")
    rows.append(["incidents", text(", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none")])
    return Section("summary", "Summary", [table(["", ""], rows, table_id="summary")])


def training_section(data: RunData, events: list[Event], pictures: list[Picture]) -> Section:
    section = Section("training", "Training")
    csv_last = max((s for s, _ in data.series("train_loss")), default=-1)
    records = data.batches.get(min(data.batches)) if data.batches else []
    beyond = [(r["step"], r["loss"]) for r in records or [] if r["step"] > csv_last and r.get("loss") is not None]
    fig = figures.training_figure(data, events, beyond)
    if fig is None:
        section.parts.append(paragraph("No metrics logged yet.", "note"))
        return section
    files = ", ".join(os.path.relpath(p, data.run_dir) for p in data.metrics_files) or "none yet"
    picture = Picture(
        "training",
        "training curves",
        f"Loss, learning rate, masked frames and throughput over optimizer steps, from {files}; "
        "dashed lines mark incidents. Throughput is audio seconds per second of a step's wall time on rank 0, "
        "data waits and waits for peers included.",
        png_bytes(fig),
    )
    pictures.append(picture)
    section.parts.append(figure(picture))
    return section


def ranks_section(
    data: RunData,
    timed: list[tuple[RankSteps, RankTiming]],
    found: list[tuple[int, Straggler]],
    rule: StragglerConfig,
    pictures: list[Picture],
) -> Section:
    section = Section("ranks", "Ranks: data wait and compute")
    if not timed:
        section.parts.append(paragraph("No timed steps yet (batch logs without data_wait_s / compute_s).", "note"))
        return section
    segments = sorted({group.segment for group, _ in timed})
    for segment, straggler in found:
        section.parts.append(
            paragraph(f"<b>Straggler:</b> {text(straggler_sentence(timed, segment, straggler))}.", "callout")
        )
    compared = [s for s in segments if sum(1 for g, _ in timed if g.segment == s) > 1]
    if compared and not found:
        section.parts.append(
            paragraph(
                f"No rank is slower than its peers by the run's rule (nestkit.straggler: factor {rule.factor:g}, "
                f"at least {rule.min_excess_s:g} s per step, medians over each rank's steps).",
                "ok",
            )
        )
    for warning in data.stragglers:
        section.parts.append(
            paragraph(
                f"Warned while training, at step {text(warning.get('step'))}: {text(warning.get('sentence'))}.",
                "callout",
            )
        )
    rows = []
    for group, t in timed:
        key = f"seg{group.segment}.rank{t.rank}"
        files = "<br>".join(text(describe_load(load)) for load in t.slow_loads[:3])
        rows.append(
            [
                text(t.rank),
                text(f"{group.span} (segment {group.segment})" if len(segments) > 1 else group.span),
                number(t.steps, f"{key}.steps"),
                number(t.data_wait_s, f"{key}.data_wait_s"),
                number(t.compute_s, f"{key}.compute_s"),
                number(t.peer_wait_s, f"{key}.peer_wait_s"),
                percent(group.share("data_wait_s"), f"{key}.data_wait_share"),
                percent(group.share("compute_s"), f"{key}.compute_share"),
                files,
            ]
        )
    headers = [
        "rank",
        "steps",
        "timed",
        "data wait s",
        "compute s",
        "peer wait s",
        "data wait",
        "compute",
        "slowest loads",
    ]
    section.parts.append(table(headers, rows, {2, 3, 4, 5, 6, 7}, "ranks"))
    section.parts.append(
        paragraph(
            "Seconds are medians per micro-batch; shares are of the rank's summed step time. Data wait: in the "
            "DataLoader's next(); compute: the step itself; peer wait: in collectives, waiting for the other ranks "
            "(a rank that waits for its peers is waiting for a straggler). Ranks are compared within a segment of "
            "the run (a start or a resume); each rank's first step in a segment is left out.",
            "note",
        )
    )
    fig = figures.step_time_figure([group for group, _ in timed], len(segments) > 1)
    if fig is not None:
        picture = Picture(
            "step_time",
            "step time per rank",
            "Each rank's step time split into data wait, compute and waits for peers, and its data wait per step.",
            png_bytes(fig),
        )
        pictures.append(picture)
        section.parts.append(figure(picture))
    return section


def straggler_sentence(timed: list[tuple[RankSteps, RankTiming]], segment: int, straggler: Straggler) -> str:
    """The straggler's sentence, prefixed with the steps it covers when the run has several segments."""
    groups = [g for g, _ in timed if g.segment == segment]
    if len({g.segment for g, _ in timed}) == 1:
        return straggler.sentence()
    first = min(g.steps[0] for g in groups)
    last = max(g.steps[-1] for g in groups)
    return f"steps {first}-{last} ({len(groups)} ranks): {straggler.sentence()}"


def incidents_section(
    events: list[Event], last_step: int | None, views: list[tuple[Event, Picture]], pictures
) -> Section:
    section = Section("incidents", "Incidents")
    shown = [e for e in events if e.kind != "bad data"]
    fig = figures.timeline_figure(events, last_step)
    if fig is not None:
        picture = Picture(
            "timeline",
            "incident timeline",
            "Stalls, anomalies, straggler warnings, resumes, world-size changes and batches with replaced samples, by step.",
            png_bytes(fig),
        )
        pictures.append(picture)
        section.parts.append(figure(picture))
    if not shown:
        section.parts.append(paragraph("No stall, anomaly, straggler warning, resume or world-size change.", "ok"))
    else:
        rows = [
            [text(e.kind), number(e.step, f"event{i}.step"), text(e.rank if e.rank is not None else "-"), text(e.text)]
            for i, e in enumerate(shown)
        ]
        section.parts.append(table(["kind", "step", "rank", "what"], rows, {1}, "incidents"))
    for event, picture in views:
        css = "callout stall" if event.kind == "stall" else "callout"
        section.parts.append(paragraph(text(event.text), css))
        section.parts.append(figure(picture))
    return section


def data_section(data: RunData, describe_path: Callable[[dict], str], pictures: list[Picture]) -> Section:
    section = Section("data", "Data: quarantine")
    records = data.quarantine
    if not records:
        section.parts.append(paragraph("No sample or noise was unusable.", "ok"))
        return section
    fig = figures.quarantine_figure(records)
    if fig is not None:
        picture = Picture(
            "quarantine",
            "quarantine by category",
            "Unusable utterances and noises by category (each was replaced: the batch kept its size).",
            png_bytes(fig),
        )
        pictures.append(picture)
        section.parts.append(figure(picture))
    by_category: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by_category.setdefault((str(r.get("category")), str(r.get("kind", "audio"))), []).append(r)
    rows = []
    for (category, kind), items in sorted(by_category.items(), key=lambda kv: -len(kv[1])):
        files = sorted({describe_path(r) for r in items})
        rows.append(
            [
                text(category),
                text(kind),
                number(len(items), f"quarantine.{category}.{kind}"),
                "<br>".join(map(text, files)),
            ]
        )
    section.parts.append(table(["category", "kind", "records", "files"], rows, {2}, "quarantine-categories"))
    detail = [
        [
            text(r.get("rank")),
            text(r.get("split", "train")),
            text(r.get("epoch")),
            text(r.get("batch")),
            text(r.get("kind")),
            text(r.get("cut_id") or r.get("noise_id")),
            text(describe_path(r)),
            text(r.get("category")),
            text(r.get("reason")),
            text(r.get("substitute") or "-"),
        ]
        for r in records[:QUARANTINE_ROWS_SHOWN]
    ]
    headers = [
        "rank",
        "split",
        "epoch",
        "batch",
        "kind",
        "cut",
        "file (manifest:line)",
        "category",
        "reason",
        "replaced by",
    ]
    section.parts.append(table(headers, detail, table_id="quarantine"))
    if len(records) > QUARANTINE_ROWS_SHOWN:
        section.parts.append(paragraph(f"First {QUARANTINE_ROWS_SHOWN} of {len(records)} records shown.", "note"))
    return section


def epochs_section(data: RunData, lengths: dict[int, int], pictures: list[Picture]) -> Section:
    section = Section("epochs", "Epoch progress")
    fig = figures.epochs_figure(data.batches, lengths)
    if fig is None:
        section.parts.append(paragraph("No trained step yet.", "note"))
        return section
    picture = Picture(
        "epochs",
        "epoch progress",
        "Data position after each step: epochs done plus the part of the current epoch consumed"
        + ("" if lengths else " (epoch lengths unknown: the run's data could not be opened)")
        + ".",
        png_bytes(fig),
    )
    pictures.append(picture)
    section.parts.append(figure(picture))
    rows = []
    rank = min(data.batches)
    by_epoch: dict[int | None, list[dict]] = {}
    for r in data.batches[rank]:
        by_epoch.setdefault(r.get("epoch"), []).append(r)
    for epoch, records in sorted((e, r) for e, r in by_epoch.items() if e is not None):
        length = lengths.get(epoch)
        consumed = max((r.get("consumed_after") or 0) for r in records)
        rows.append(
            [
                text(epoch),
                number(records[0]["step"], f"epoch{epoch}.first_step"),
                number(records[-1]["step"], f"epoch{epoch}.last_step"),
                number(consumed, f"epoch{epoch}.consumed"),
                number(length, f"epoch{epoch}.length"),
                percent(min(consumed, length) / length, f"epoch{epoch}.done") if length else "-",
            ]
        )
    headers = ["epoch", "first step", "last step", "micro-batches consumed", "micro-batches in epoch", "done"]
    section.parts.append(table(headers, rows, {1, 2, 3, 4, 5}, "epochs"))
    return section


# ------------------------------------------------------------------------------------------------
# incident batches


def incident_views(
    context: Context, events: list[Event], limit: int, describe: Callable[[dict], str], notes: list[str]
) -> list[tuple[Event, Picture]]:
    """The batch of each stall and anomaly (the first `limit`), rebuilt as training built it and drawn."""
    wanted = [e for e in events if e.kind in ("stall", "anomaly") and e.batch is not None]
    if not wanted or context.session is None or context.cfg is None:
        return []
    from nestkit.tools.report.batch_view import batch_figure  # torch: only with the run's data opened

    session = context.session
    views: list[tuple[Event, Picture]] = []
    for event in wanted[:limit]:
        epoch, index, rank = event.batch or (0, 0, 0)  # `wanted` has a batch
        try:
            place = session.layout.place_of_index(epoch, index)
            if place is None:
                notes.append(
                    f"{event.kind} at step {event.step}: its batch (epoch {epoch}, {index}) is not in the plan"
                )
                continue
            batch = session.build(place)
        except NestkitError as exc:
            notes.append(f"{event.kind} at step {event.step}: its batch could not be rebuilt ({exc})")
            continue
        # a batch's samples, draws and masks depend on its place in the epoch's sequence, not on the rank
        # that trains it: after a resume on other ranks it is the same batch, trained by another rank
        title = (
            f"{event.title} at step {event.step}: rank {rank}'s batch, epoch {epoch} micro-batch {index}; "
            f"fingerprint {batch.fingerprint}"
        )
        fig = batch_figure(context.cfg, batch, title, describe)
        name = f"incident-{event.kind.replace(' ', '-')}-{event.number if event.number is not None else len(views) + 1}"
        later = (
            f" After the resume it was trained at step {place.step} by rank {place.rank} of {session.layout.world_size_at(place)}."
            if place.rank != rank
            else ""
        )
        caption = (
            f"The batch of this incident, rebuilt exactly as training built it: log-mel of clean and noisy audio, the "
            f"frames its step masked, the mixed segments.{later} Hear it: nestkit replay-batch --step {place.step} "
            f"{session.run_dir or config_path('.')} --rank {place.rank} --audio DIR"
        )
        views.append((event, Picture(name, event.title, caption, png_bytes(fig))))
        if len(views) >= limit:
            break
    if len(wanted) > limit:
        notes.append(f"{len(wanted) - limit} more incident batch(es) not drawn (--incident-batches {limit})")
    return views


# ------------------------------------------------------------------------------------------------


def build_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    png_dir: str | os.PathLike | None = None,
    incident_batches: int = INCIDENT_BATCHES,
    open_data: bool = True,
    describe: Callable[[dict], str] = str,
    timeout_s: float = 10.0,
) -> ReportResult:
    """Write the report of `run_dir` to `out` (and its figures to `png_dir`)."""
    require_matplotlib()
    run_dir = Path(run_dir).resolve()
    if not is_run_folder(run_dir):
        raise NestkitError(
            f"run folder {run_dir}: not a nestkit run (expected config.yaml and batches/, heartbeat/ or checkpoints/ "
            "in it). Pass the folder `nestkit train` printed as its run folder"
        )
    data = read_run(run_dir)
    context = open_context(run_dir, open_data, timeout_s)
    notes = list(context.notes)
    events = all_events(data)
    groups = rank_steps(data.batches, [s.start_step for s in data.segments])
    timed = [(group, timing(group, context.resolve)) for group in groups]
    rule = context.cfg.nestkit.straggler if context.cfg is not None else StragglerConfig()
    found = find_stragglers(timed, rule)
    epochs = {int(r["epoch"]) for records in data.batches.values() for r in records if r.get("epoch") is not None}
    lengths = context.epoch_lengths(epochs)
    views = incident_views(context, events, incident_batches, describe, notes) if incident_batches > 0 else []

    def where(record: dict) -> str:
        path = record.get("path") or "?"
        manifest = record.get("manifest")
        return f"{path} ({os.path.basename(str(manifest))}:{record.get('line')})" if manifest else str(path)

    pictures: list[Picture] = []
    sections = [
        summary_section(data, events),
        training_section(data, events, pictures),
        ranks_section(data, timed, found, rule, pictures),
        incidents_section(events, data.last_step, views, pictures),
        data_section(data, where, pictures),
        epochs_section(data, lengths, pictures),
    ]
    pictures.extend(picture for _, picture in views)
    notes += [str(s) for s in data.skipped]
    running = data.running_ranks
    headline = (
        f"live: rank(s) {', '.join(map(str, running))} running, at step {data.last_step}"
        if running
        else f"{data.last_step + 1 if data.last_step is not None else 0} step(s) trained"
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(str(run_dir), headline, sections, notes), encoding="utf-8")
    pngs = []
    if png_dir is not None:
        folder = Path(png_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for picture in pictures:
            path = folder / f"{picture.name}.png"
            path.write_bytes(picture.png)
            pngs.append(path)
    said = [straggler_sentence(timed, segment, straggler) for segment, straggler in found]
    return ReportResult(out, pngs, pictures, said, notes)
