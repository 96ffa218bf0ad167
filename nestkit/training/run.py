"""`nestkit train`: Lightning training of the NEST model on nestkit's data pipeline.

The run folder (exp_manager.exp_dir / exp_manager.name, default runs/<name>) is described in
nestkit/runfolder/layout.py. DDP goes through Lightning (its launcher, torchrun or SLURM); nestkit's
planner shards the data (`use_distributed_sampler=False`) and guarantees every rank the same
number of batches.

Which run a start continues, decided before anything is written (`resolve`):

    folder holds            train            train --resume             --fresh (either)
    nothing                 new run          refused: no such run       new run
    logs, no checkpoint     refused          refused: nothing to resume new run, logs moved aside
    checkpoints             refused          resumes (validated)        see below

`--resume` loads last.ckpt only after checking it (readable, a state_dict, a data position); a
damaged last.ckpt is named and the newest intact stepN.ckpt is used instead, said in one line.
`train --fresh` starts over: everything of the earlier run moves to previous/<time>/; with
`--resume --fresh` it starts over only when there is nothing to resume. NeMo's
`exp_manager.resume_if_exists` is `--resume`, and `resume_ignore_no_checkpoint` is the "start
over when there is nothing to resume" half of `--fresh` (NeMo's defaults: both false). A new run
never appends to another run's batch log, quarantine, heartbeats or loggers.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl

from nestkit.config import NestConfig, save_config
from nestkit.core.errors import ConfigError, NestkitError
from nestkit.monitor.stall_watch import StallWatch
from nestkit.runfolder.layout import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    checkpoint_files,
    config_path,
    last_checkpoint,
    run_logs,
)
from nestkit.runfolder.previous import move_aside
from nestkit.training.callbacks import SegmentLog
from nestkit.training.devices import accelerator_and_devices, is_global_rank_zero, world_size
from nestkit.training.trainer import build_trainer, quiet_lightning, validation_every, worker_notes

FRESH_HINT = "pass --fresh to start a new run in this folder (the earlier run's files move to previous/<time>/)"


@dataclass
class TrainPlan:
    """What `train` is about to do, resolved from the config and the run folder."""

    run_dir: Path
    resume_from: Path | None
    init_from: Path | None
    move_aside: list[str] = field(default_factory=list)  # the earlier run's files to move to previous/
    warnings: list[str] = field(default_factory=list)  # what the user must know (a damaged checkpoint)


def _listed(names: list[str]) -> str:
    """`batches/, heartbeat/ and config.yaml` (folders with a slash)."""
    shown = [name if "." in name else f"{name}/" for name in names]
    if len(shown) < 2:
        return "".join(shown)
    return f"{', '.join(shown[:-1])} and {shown[-1]}"


def _resumable(run_dir: Path, explicit: Path | None) -> tuple[Path | None, list[str], list[str]]:
    """(checkpoint to resume from, warnings, problems): `explicit` or last.ckpt when intact, else --
    for the run's own last.ckpt only -- the newest intact stepN.ckpt, said in a warning."""
    from nestkit.training.checkpoints import check_checkpoint, newest_intact

    wanted = explicit or last_checkpoint(run_dir)
    problem = check_checkpoint(wanted)
    if problem is None:
        return wanted, [], []
    if explicit is not None:  # the user named this file: never silently take another
        fallback, _ = newest_intact(run_dir)
        use = f"; the newest intact checkpoint of this run is {fallback} (pass it to --resume-from)" if fallback else ""
        raise NestkitError(f"checkpoint {wanted}: {problem}{use}")
    shown = Path(CHECKPOINTS_DIR) / wanted.name
    fallback, damaged = newest_intact(run_dir, skip=wanted)
    missing = problem == "no such file"
    problems = ([] if missing else [f"{shown} is {problem}"]) + damaged
    if fallback is None:
        return None, [], problems
    where = Path(CHECKPOINTS_DIR) / fallback.name
    if missing:
        note = f"{shown} does not exist; resuming from {where} (the newest intact checkpoint)"
    else:
        note = f"{shown} is {problem}; resuming from {where} (the newest intact one)"
    return fallback, [note] + [f"passed over {d}" for d in damaged], problems


def resolve(cfg: NestConfig, resume: bool | str = False, fresh: bool = False, rank_zero: bool = True) -> TrainPlan:
    """Where the run writes, what it resumes from and what it initialises from; refuse surprises.

    Only global rank zero refuses or moves files; other ranks (started after it, or next to it by
    torchrun/SLURM) find the same checkpoint quietly and never judge a folder rank zero may
    already be writing into."""
    run_dir = cfg.run_dir.resolve()
    explicit = Path(resume) if isinstance(resume, str) and resume else None
    if explicit is not None and fresh:
        raise ConfigError(["--fresh and --resume-from: contradictory (a fresh run resumes from nothing)"])
    wants_resume = bool(resume) or cfg.exp_manager.resume_if_exists
    may_start_over = fresh or cfg.exp_manager.resume_ignore_no_checkpoint
    logs = run_logs(run_dir)
    checkpoints = checkpoint_files(run_dir)
    resume_from: Path | None = None
    warnings: list[str] = []
    move: list[str] = []

    if wants_resume:
        resume_from, warnings, problems = _resumable(run_dir, explicit)
        if resume_from is None and rank_zero:
            if not may_start_over:
                raise NestkitError(_nothing_to_resume(run_dir, logs, checkpoints, problems))
            move = [*logs, *([CHECKPOINTS_DIR] if checkpoints else []), *_config_if(run_dir, logs or checkpoints)]
            if problems:
                warnings.append("nothing intact to resume (" + "; ".join(problems) + "): starting a new run")
    elif rank_zero and (checkpoints or logs):
        if not fresh:
            raise NestkitError(_earlier_run(run_dir, logs, checkpoints))
        move = [*logs, *([CHECKPOINTS_DIR] if checkpoints else []), CONFIG_FILE]

    init = cfg.init_from or cfg.init_from_nemo_model or cfg.init_from_ptl_ckpt
    init_from = Path(init) if init and resume_from is None else None
    if init_from is not None and not init_from.is_file():
        raise NestkitError(f"init_from {init_from}: no such file (expected a .nemo, .ckpt or state_dict .pt)")
    return TrainPlan(run_dir, resume_from, init_from, move, warnings)


def _config_if(run_dir: Path, earlier: object) -> list[str]:
    return [CONFIG_FILE] if earlier and config_path(run_dir).is_file() else []


def _nothing_to_resume(run_dir: Path, logs: list[str], checkpoints: list[Path], problems: list[str]) -> str:
    if problems:
        return f"run {run_dir}: nothing intact to resume ({'; '.join(problems)}). Restore a checkpoint, or {FRESH_HINT}"
    if not run_dir.exists() or not (logs or config_path(run_dir).is_file()):
        return (
            f"run {run_dir}: no such run (expected {last_checkpoint(run_dir)}, and the folder holds no run). "
            "Check exp_manager.exp_dir and exp_manager.name, or drop --resume to start it"
        )
    return (
        f"run {run_dir}: nothing to resume (expected {last_checkpoint(run_dir)}; the earlier run left "
        f"{_listed(logs) or 'its config'} but saved no checkpoint, e.g. it stopped before "
        f"exp_manager.checkpoint_callback_params.every_n_train_steps). Drop --resume and {FRESH_HINT}"
    )


def _earlier_run(run_dir: Path, logs: list[str], checkpoints: list[Path]) -> str:
    if checkpoints:
        found = last_checkpoint(run_dir) if last_checkpoint(run_dir) in checkpoints else checkpoints[-1]
        return (
            f"run {run_dir}: already has checkpoints (found {found}). Pass --resume to continue it, "
            f"{FRESH_HINT}, or set exp_manager.name (or exp_dir) for a new run"
        )
    return (
        f"run {run_dir}: holds an earlier run's logs ({_listed(logs)}) and no checkpoint: a new run would "
        f"append to them. {FRESH_HINT[0].upper()}{FRESH_HINT[1:]}, or set exp_manager.name (or exp_dir) for a new run"
    )


def resume_notes(cfg: NestConfig, checkpoint: Path, planner, world: int) -> list[str]:
    """Check that the checkpoint's data position can continue on this world size and plan (a
    ConfigError naming the settings if not); the notes say what the resume does."""
    import torch

    from nestkit.training.elastic import check_resume, saved_position

    try:
        loaded = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise NestkitError(f"checkpoint {checkpoint}: cannot be read ({type(exc).__name__}: {exc})") from None
    saved = saved_position(loaded) if isinstance(loaded, dict) else None
    if saved is None:
        return [f"checkpoint {checkpoint}: no nestkit data position in it; training continues from the first batch"]
    accumulate = cfg.trainer.accumulate_grad_batches
    notes = check_resume(saved, planner.signature(), world, accumulate)
    # the rest of this epoch and the next one must deal to this world size (equal steps on every rank)
    planner.deal(saved.position.epoch, world, saved.position.consumed, accumulate)
    planner.deal(saved.position.epoch + 1, world, 0, accumulate)
    return notes


def train(
    cfg: NestConfig,
    resume: bool | str = False,
    interactive: bool = False,
    notify=print,
    fresh: bool = False,
    warn=None,
) -> TrainPlan:
    """Train; returns the resolved plan (run folder, checkpoints). Raises NestkitError on bad input."""
    from nestkit.data.pipeline import build_pipeline, record_skipped_lines
    from nestkit.model.checkpoint import load_nemo_weights
    from nestkit.training.checkpoints import AtomicCheckpointIO
    from nestkit.training.module import NestLightningModule

    warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))
    rank_zero = is_global_rank_zero()
    plan = resolve(cfg, resume, fresh, rank_zero)
    run_dir = plan.run_dir
    if cfg.model.train_ds is None:
        raise ConfigError(["model.train_ds: missing (expected a dataset section with manifest_filepath)"])
    # Fail before starting processes: manifests, plan and equal batch counts are checked here.
    accelerator, devices = accelerator_and_devices(cfg)
    world = world_size(devices, cfg.trainer.num_nodes)
    probes = [build_pipeline(cfg, "train", 0, world)]
    val_every, notes = validation_every(cfg, probes[0].sampler.plan().num_batches)
    if plan.resume_from is not None:
        notes += resume_notes(cfg, plan.resume_from, probes[0].planner, world)
    if cfg.model.validation_ds is not None:
        probes.append(build_pipeline(cfg, "validation", 0, world))
        probes[-1].sampler.plan()
    for probe in probes:  # corpus layout notes (Shar gaps, stray files, rebuilt indexes), once per run
        notes += [f"{probe.split}: {n}" for n in probe.index.notices + (probe.noise.notices if probe.noise else [])]
    for note in notes + worker_notes(cfg):
        notify(note)
    if rank_zero:
        for text in plan.warnings:
            warn(text)
        if plan.move_aside:
            moved_to = move_aside(run_dir, plan.move_aside)
            warn(f"starting a new run in {run_dir}: the earlier run's {_listed(plan.move_aside)} moved to {moved_to}")
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero:
        save_config(cfg, config_path(run_dir))
        for probe in probes:  # lines left out with nestkit.skip_bad_manifest_lines: counted, named, recorded
            for note in record_skipped_lines(probe, run_dir):
                notify(note)

    pl.seed_everything(cfg.nestkit.seed, workers=False, verbose=False)
    module = NestLightningModule(cfg, run_dir)
    if plan.init_from is not None:
        load_nemo_weights(module.model, plan.init_from)
    quiet_lightning()
    watch = StallWatch(cfg.nestkit.watchdog, run_dir, cfg.nestkit.straggler)  # heartbeats, stalls, stragglers
    segments = SegmentLog(run_dir, plan.resume_from, cfg.model.train_ds.num_workers)
    trainer = build_trainer(cfg, run_dir, interactive, val_every, [watch, segments], plugins=[AtomicCheckpointIO()])
    try:
        trainer.fit(module, ckpt_path=str(plan.resume_from) if plan.resume_from else None)
    except BaseException as exc:
        watch.close(exc)  # the heartbeat says "failed" and why: `nestkit stacks` reads it
        raise
    watch.close()
    return plan
