"""`nestkit train`: Lightning training of the NEST model on nestkit's data pipeline.

The run folder (exp_manager.exp_dir / exp_manager.name, default runs/<name>) is described in
nestkit/runfolder/layout.py. DDP goes through Lightning (its launcher, torchrun or SLURM); nestkit's
planner shards the data (`use_distributed_sampler=False`) and guarantees every rank the same
number of batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl

from nestkit.config import NestConfig, save_config
from nestkit.core.errors import ConfigError, NestkitError
from nestkit.monitor.stall_watch import StallWatch
from nestkit.runfolder.layout import config_path, last_checkpoint
from nestkit.training.callbacks import SegmentLog
from nestkit.training.devices import accelerator_and_devices, is_global_rank_zero, world_size
from nestkit.training.trainer import build_trainer, quiet_lightning, validation_every, worker_notes


@dataclass
class TrainPlan:
    """What `train` is about to do, resolved from the config and the run folder."""

    run_dir: Path
    resume_from: Path | None
    init_from: Path | None


def resolve(cfg: NestConfig, resume: bool | str = False) -> TrainPlan:
    """Where the run writes, what it resumes from and what it initialises from; refuse surprises."""
    run_dir = cfg.run_dir.resolve()
    last = last_checkpoint(run_dir)
    resume_from = None
    if isinstance(resume, str) and resume:
        resume_from = Path(resume)
        if not resume_from.is_file():
            raise NestkitError(f"checkpoint {resume_from}: no such file (expected a .ckpt to resume from)")
    elif resume or cfg.exp_manager.resume_if_exists:
        if last.is_file():
            resume_from = last
        elif resume and not cfg.exp_manager.resume_ignore_no_checkpoint:
            raise NestkitError(f"run {run_dir}: nothing to resume (expected {last}). Train without --resume first")
    elif last.is_file():
        raise NestkitError(
            f"run {run_dir}: already has checkpoints (found {last}). Pass --resume to continue it, "
            "or set exp_manager.name (or exp_dir) for a new run"
        )
    init = cfg.init_from or cfg.init_from_nemo_model or cfg.init_from_ptl_ckpt
    init_from = Path(init) if init and resume_from is None else None
    if init_from is not None and not init_from.is_file():
        raise NestkitError(f"init_from {init_from}: no such file (expected a .nemo, .ckpt or state_dict .pt)")
    return TrainPlan(run_dir, resume_from, init_from)


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


def train(cfg: NestConfig, resume: bool | str = False, interactive: bool = False, notify=print) -> TrainPlan:
    """Train; returns the resolved plan (run folder, checkpoints). Raises NestkitError on bad input."""
    from nestkit.data.pipeline import build_pipeline, record_skipped_lines
    from nestkit.model.checkpoint import load_nemo_weights
    from nestkit.training.module import NestLightningModule

    plan = resolve(cfg, resume)
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
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_global_rank_zero():
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
    trainer = build_trainer(cfg, run_dir, interactive, val_every, [watch, segments])
    try:
        trainer.fit(module, ckpt_path=str(plan.resume_from) if plan.resume_from else None)
    except BaseException as exc:
        watch.close(exc)  # the heartbeat says "failed" and why: `nestkit stacks` reads it
        raise
    watch.close()
    return plan
