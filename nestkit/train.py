"""`nestkit train`: Lightning training of the NEST model on nestkit's data pipeline.

The run folder (exp_manager.exp_dir / exp_manager.name, default runs/<name>) holds:
    config.yaml              the resolved config the run used
    checkpoints/             every-N-steps checkpoint, last.ckpt (and the best by val_loss)
    batches/rank<R>.jsonl    per step and rank: batch position, fingerprint, cut ids, loss
    heartbeat/rank<R>.json   per rank, rewritten every second: phase, step, batches in flight, workers
    heartbeat/rank<R>-worker<W>.status  per DataLoader worker: the cut/file/manifest line it reads now
    stacks/rank<R>-worker<W>.txt        worker stack dumps (SIGUSR1 -> faulthandler)
    stall/<N>/               a stall incident: every rank's stacks and state, report.json, report.txt
    quarantine/rank<R>.jsonl every sample or noise that could not be used, and its substitute
    csv/version_N/metrics.csv, tb/   train_loss, val_loss, lr, masked_frames, audio_seconds_per_second,
                             bad_samples, empty_mask_batches (one csv version per start or resume)

DDP goes through Lightning (its launcher, torchrun or SLURM); nestkit's planner shards the data
(`use_distributed_sampler=False`) and guarantees every rank the same number of batches.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from nestkit.config import NestConfig, save_config
from nestkit.data.batch import NestBatch
from nestkit.debug.lightning_watch import StallWatch
from nestkit.errors import ConfigError, NestkitError

BATCHES_DIR = "batches"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


def batch_log_path(run_dir: str | os.PathLike, rank: int) -> Path:
    return Path(run_dir) / BATCHES_DIR / f"rank{rank}.jsonl"


def read_batch_log(run_dir: str | os.PathLike, rank: int) -> list[dict]:
    path = batch_log_path(run_dir, rank)
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class BatchLog(Callback):
    """Appends one line per trained step and rank: what `lookup` and `replay-batch` cross-check."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._file = None

    def on_train_start(self, trainer, pl_module):
        path = batch_log_path(self.run_dir, trainer.global_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", buffering=1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: NestBatch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        record = {
            "step": trainer.global_step - 1,  # the optimiser step this batch was trained in
            "epoch": batch.position.epoch,
            "batch": batch.position.batch,
            "rank": trainer.global_rank,
            "fingerprint": batch.fingerprint,
            "cut_ids": batch.cut_ids,
            "loss": float(loss.detach()) if loss is not None else None,
            "failures": len(batch.failures),
            "time": round(time.time(), 3),
        }
        self._file.write(json.dumps(record) + "\n")

    def on_train_end(self, trainer, pl_module):
        if self._file is not None:
            self._file.close()


class SaveLastOnEnd(Callback):
    """last.ckpt is where training stopped (ModelCheckpoint's last.ckpt follows its periodic saves
    only), so `--resume` continues from the very last step.

    At max_steps it saves at the end of the last batch, as ModelCheckpoint does: by on_train_end
    Lightning has already closed the epoch, and a checkpoint taken then would resume one epoch
    ahead of the data position."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / CHECKPOINTS_DIR / LAST_CHECKPOINT
        self.saved_at: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.save_checkpoint(self.path, weights_only=False)
            self.saved_at = trainer.global_step

    def on_train_end(self, trainer, pl_module):
        if self.saved_at != trainer.global_step:  # stopped by max_epochs: the epoch is complete
            trainer.save_checkpoint(self.path, weights_only=False)


class StepPrinter(Callback):
    """Plain progress lines for logs and CI (the rich bar is used on a terminal)."""

    def __init__(self, every: int):
        self.every = max(1, every)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if trainer.global_rank == 0 and (step % self.every == 0 or step == trainer.max_steps):
            metrics = trainer.callback_metrics
            parts = [f"step {step}/{trainer.max_steps}"]
            for key in ("train_loss", "val_loss", "lr", "audio_seconds_per_second"):
                if key in metrics:
                    parts.append(f"{key} {float(metrics[key]):.4g}")
            print("  ".join(parts), flush=True)


@dataclass
class TrainPlan:
    """What `train` is about to do, resolved from the config and the run folder."""

    run_dir: Path
    resume_from: Path | None
    init_from: Path | None


def _precision(value) -> str:
    aliases = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
    return aliases.get(str(value), str(value))


def _devices(cfg: NestConfig):
    t = cfg.trainer
    accelerator = t.accelerator
    gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    devices = t.devices
    if not gpu and devices in (-1, "-1", "auto"):
        devices = 1  # -1 means "all GPUs"; on a CPU machine that is one process
    return ("gpu" if gpu else "cpu") if accelerator == "auto" else accelerator, devices


def _world_size(devices, num_nodes: int) -> int:
    if isinstance(devices, list):
        return len(devices) * num_nodes
    if isinstance(devices, int) and devices > 0:
        return devices * num_nodes
    if devices in (-1, "-1", "auto"):
        return max(torch.cuda.device_count(), 1) * num_nodes
    return int(devices) * num_nodes if str(devices).isdigit() else num_nodes


def resolve(cfg: NestConfig, resume: bool | str = False) -> TrainPlan:
    """Where the run writes, what it resumes from and what it initialises from; refuse surprises."""
    run_dir = cfg.run_dir.resolve()
    last = run_dir / CHECKPOINTS_DIR / LAST_CHECKPOINT
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


def build_trainer(
    cfg: NestConfig, run_dir: Path, interactive: bool, val_every: int, extra_callbacks: list[Callback] | None = None
) -> pl.Trainer:
    from pytorch_lightning.callbacks import RichProgressBar
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    t = cfg.trainer
    accelerator, devices = _devices(cfg)
    world = _world_size(devices, t.num_nodes)
    strategy = t.strategy if world > 1 else "auto"
    ckpt = cfg.exp_manager.checkpoint_callback_params
    callbacks: list[Callback] = [*(extra_callbacks or []), BatchLog(run_dir) if cfg.nestkit.log_batches else None]
    callbacks.append(RichProgressBar() if interactive and t.enable_progress_bar else StepPrinter(t.log_every_n_steps))
    if cfg.exp_manager.create_checkpoint_callback:
        callbacks.append(ModelCheckpoint(
            # monitoring "step" (max) keeps the newest keep_periodic checkpoints
            dirpath=run_dir / CHECKPOINTS_DIR, filename="step{step}", auto_insert_metric_name=False,
            every_n_train_steps=ckpt.every_n_train_steps, save_last=ckpt.save_last,
            monitor="step", mode="max", save_top_k=ckpt.keep_periodic,
        ))
        if cfg.model.validation_ds is not None and ckpt.monitor:
            callbacks.append(ModelCheckpoint(
                dirpath=run_dir / CHECKPOINTS_DIR, filename=ckpt.filename or "best-step{step}", monitor=ckpt.monitor,
                mode=ckpt.mode, save_top_k=ckpt.save_top_k, auto_insert_metric_name=False,
            ))
        if ckpt.save_last:
            callbacks.append(SaveLastOnEnd(run_dir))
    loggers = []
    if cfg.exp_manager.create_csv_logger:
        # one version folder per start: a resumed run must not overwrite the earlier metrics.csv
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv"))
    if cfg.exp_manager.create_tensorboard_logger:
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False))
    return pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        max_steps=t.max_steps,
        # the PlanStream is one endless Lightning epoch; max_epochs counts data epochs inside it
        max_epochs=1 if t.max_epochs > 0 else -1,
        val_check_interval=val_every if cfg.model.validation_ds is not None else None,
        check_val_every_n_epoch=None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val or None,
        gradient_clip_algorithm=t.gradient_clip_algorithm,
        precision=_precision(t.precision),
        log_every_n_steps=t.log_every_n_steps,
        num_sanity_val_steps=t.num_sanity_val_steps,
        sync_batchnorm=t.sync_batchnorm and world > 1 and accelerator != "cpu",
        benchmark=t.benchmark,
        deterministic=t.deterministic,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches if cfg.model.validation_ds is not None else 0,
        use_distributed_sampler=False,
        enable_checkpointing=cfg.exp_manager.create_checkpoint_callback,
        enable_progress_bar=interactive and t.enable_progress_bar,
        enable_model_summary=False,
        logger=loggers or False,
        callbacks=[c for c in callbacks if c is not None],
        default_root_dir=str(run_dir),
    )


def _validation_every(cfg: NestConfig, batches_per_epoch: int) -> tuple[int, list[str]]:
    """Training is one endless Lightning epoch, so validation is scheduled in steps: an int
    val_check_interval is steps (NeMo's 2500); a fraction is that fraction of a data epoch."""
    interval = cfg.trainer.val_check_interval
    if interval is None:
        return batches_per_epoch, []
    if isinstance(interval, float):
        steps = max(1, round(interval * batches_per_epoch))
        return steps, [f"trainer.val_check_interval={interval}: validating every {steps} steps ({interval} of a {batches_per_epoch}-batch epoch)"]
    return interval, []


def _quiet_lightning() -> None:
    """Keep Lightning's advertising and internal deprecations out of the user's console; its
    warnings about the user's own setup still show."""
    for name in ("pytorch_lightning", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (
        r".*isinstance\(treespec, LeafSpec\).*",  # Lightning's own use of a torch API
        r".*does not have many workers.*",  # nestkit chose num_workers from the config
        r".*DataLoader will create \d+ worker processes in total.*",  # train() notes it once, by its config key
    ):
        warnings.filterwarnings("ignore", message=message)


def _worker_notes(cfg: NestConfig) -> list[str]:
    """More DataLoader workers than cores load no faster and cost memory: say so by config key."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    notes = []
    for key, ds in (("train_ds", cfg.model.train_ds), ("validation_ds", cfg.model.validation_ds)):
        if ds is not None and ds.num_workers > cores:
            notes.append(f"model.{key}.num_workers={ds.num_workers} per rank on {cores} CPU core(s): "
                         "more workers than cores load no faster and use more memory")
    return notes


def train(cfg: NestConfig, resume: bool | str = False, interactive: bool = False, notify=print) -> TrainPlan:
    """Train; returns the resolved plan (run folder, checkpoints). Raises NestkitError on bad input."""
    from nestkit.data.pipeline import build_pipeline
    from nestkit.model.checkpoint import load_nemo_weights
    from nestkit.model.lightning import NestLightningModule

    plan = resolve(cfg, resume)
    run_dir = plan.run_dir
    if cfg.model.train_ds is None:
        raise ConfigError(["model.train_ds: missing (expected a dataset section with manifest_filepath)"])
    # Fail before starting processes: manifests, plan and equal batch counts are checked here.
    accelerator, devices = _devices(cfg)
    world = _world_size(devices, cfg.trainer.num_nodes)
    probe = build_pipeline(cfg, "train", 0, world)
    val_every, notes = _validation_every(cfg, probe.sampler.plan().num_batches)
    for note in notes + _worker_notes(cfg):
        notify(note)
    if cfg.model.validation_ds is not None:
        build_pipeline(cfg, "validation", 0, world).sampler.plan()
    run_dir.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
        save_config(cfg, run_dir / "config.yaml")

    pl.seed_everything(cfg.nestkit.seed, workers=False, verbose=False)
    module = NestLightningModule(cfg, run_dir)
    if plan.init_from is not None:
        load_nemo_weights(module.model, plan.init_from)
    _quiet_lightning()
    watch = StallWatch(cfg.nestkit.watchdog, run_dir)  # heartbeats and the stall watchdog
    trainer = build_trainer(cfg, run_dir, interactive, val_every, [watch])
    try:
        trainer.fit(module, ckpt_path=str(plan.resume_from) if plan.resume_from else None)
    except BaseException as exc:
        watch.close(exc)  # the heartbeat says "failed" and why: `nestkit stacks` reads it
        raise
    watch.close()
    return plan
