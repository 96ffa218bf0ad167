"""The Lightning Trainer nestkit trains with: callbacks, validation schedule, warnings (loggers: loggers.py)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from nestkit.config import NestConfig
from nestkit.core.procs import usable_cores
from nestkit.runfolder.layout import checkpoints_dir
from nestkit.training.anomaly import AnomalyWatch
from nestkit.training.callbacks import BatchLog, SaveLastOnEnd, StepPrinter
from nestkit.training.devices import accelerator_and_devices, lightning_precision, world_size
from nestkit.training.loggers import build_loggers


def build_trainer(
    cfg: NestConfig,
    run_dir: Path,
    interactive: bool,
    val_every: int,
    extra_callbacks: list[Callback] | None = None,
    plugins: list | None = None,
) -> pl.Trainer:
    from pytorch_lightning.callbacks import RichProgressBar

    t = cfg.trainer
    accelerator, devices = accelerator_and_devices(cfg)
    world = world_size(devices, t.num_nodes)
    strategy = t.strategy if world > 1 else "auto"
    ckpt = cfg.exp_manager.checkpoint_callback_params
    callbacks: list[Callback] = list(extra_callbacks or [])
    if cfg.nestkit.log_batches:
        callbacks.append(BatchLog(run_dir))
    if cfg.nestkit.anomaly.enabled:
        callbacks.append(AnomalyWatch(cfg, run_dir))
    callbacks.append(RichProgressBar() if interactive and t.enable_progress_bar else StepPrinter(t.log_every_n_steps))
    if cfg.exp_manager.create_checkpoint_callback:
        callbacks.append(
            ModelCheckpoint(
                # monitoring "step" (max) keeps the newest keep_periodic checkpoints
                dirpath=checkpoints_dir(run_dir),
                filename="step{step}",
                auto_insert_metric_name=False,
                every_n_train_steps=ckpt.every_n_train_steps,
                save_last=ckpt.save_last,
                monitor="step",
                mode="max",
                save_top_k=ckpt.keep_periodic,
            )
        )
        if cfg.model.validation_ds is not None and ckpt.monitor:
            callbacks.append(
                ModelCheckpoint(
                    dirpath=checkpoints_dir(run_dir),
                    filename=ckpt.filename or "best-step{step}",
                    monitor=ckpt.monitor,
                    mode=ckpt.mode,
                    save_top_k=ckpt.save_top_k,
                    auto_insert_metric_name=False,
                )
            )
        if ckpt.save_last:
            callbacks.append(SaveLastOnEnd(run_dir))
    loggers = build_loggers(cfg, run_dir)
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
        precision=lightning_precision(t.precision, accelerator),
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
        callbacks=callbacks,
        plugins=plugins or None,
        default_root_dir=str(run_dir),
    )


def validation_every(cfg: NestConfig, batches_per_epoch: int) -> tuple[int, list[str]]:
    """Training is one endless Lightning epoch, so validation is scheduled in steps: an int
    val_check_interval is steps (NeMo's 2500); a fraction is that fraction of a data epoch."""
    interval = cfg.trainer.val_check_interval
    if interval is None:
        return batches_per_epoch, []
    if isinstance(interval, float):
        steps = max(1, round(interval * batches_per_epoch))
        return steps, [
            f"trainer.val_check_interval={interval}: validating every {steps} steps ({interval} of a {batches_per_epoch}-batch epoch)"
        ]
    return interval, []


def quiet_lightning() -> None:
    """Keep Lightning's advertising and internal deprecations out of the user's console; its
    warnings about the user's own setup still show."""
    for name in ("pytorch_lightning", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (
        r".*isinstance\(treespec, LeafSpec\).*",  # Lightning's own use of a torch API
        r".*does not have many workers.*",  # nestkit chose num_workers from the config
        r".*DataLoader will create \d+ worker processes in total.*",  # train() notes it once, by its config key
        r".*Checkpoint directory .* exists and is not empty.*",  # a resume: run.resolve decided about the folder
    ):
        warnings.filterwarnings("ignore", message=message)


def worker_notes(cfg: NestConfig) -> list[str]:
    """More DataLoader workers than cores load no faster and cost memory: say so by config key."""
    cores = usable_cores()
    notes = []
    for key, ds in (("train_ds", cfg.model.train_ds), ("validation_ds", cfg.model.validation_ds)):
        if ds is not None and ds.num_workers > cores:
            notes.append(
                f"model.{key}.num_workers={ds.num_workers} per rank on {cores} CPU core(s): "
                "more workers than cores load no faster and use more memory"
            )
    return notes
