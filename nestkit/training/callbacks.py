"""The Trainer's callbacks that write the run folder and print progress."""

from __future__ import annotations

import time
from pathlib import Path

from pytorch_lightning.callbacks import Callback

from nestkit.data.batch import NestBatch
from nestkit.runfolder.batch_log import BatchLogWriter
from nestkit.runfolder.layout import last_checkpoint


class BatchLog(Callback):
    """Appends one line per trained step and rank: what `lookup` and `replay-batch` cross-check."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._log: BatchLogWriter | None = None

    def on_train_start(self, trainer, pl_module):
        self._log = BatchLogWriter(self.run_dir, trainer.global_rank)

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
        self._log.append(record)

    def on_train_end(self, trainer, pl_module):
        self.close()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class SaveLastOnEnd(Callback):
    """last.ckpt is where training stopped (ModelCheckpoint's last.ckpt follows its periodic saves
    only), so `--resume` continues from the very last step.

    At max_steps it saves at the end of the last batch, as ModelCheckpoint does: by on_train_end
    Lightning has already closed the epoch, and a checkpoint taken then would resume one epoch
    ahead of the data position."""

    def __init__(self, run_dir: Path):
        self.path = last_checkpoint(run_dir)
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
