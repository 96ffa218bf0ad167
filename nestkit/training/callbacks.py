"""The Trainer's callbacks that write the run folder and print progress."""

from __future__ import annotations

import math
import time
from pathlib import Path

from pytorch_lightning.callbacks import Callback

from nestkit.data.batch import NestBatch
from nestkit.data.sampler import DataPosition
from nestkit.runfolder.batch_log import BatchLogWriter
from nestkit.runfolder.layout import last_checkpoint
from nestkit.runfolder.segments import Segment, append_segment
from nestkit.training.anomaly import ROW_DIGITS, rounded


class BatchLog(Callback):
    """Appends one line per trained micro-batch and rank: what `lookup` and `replay-batch` cross-check.

    Also each utterance's masked-token loss (`row_loss`, 4 decimals, null for NaN/Inf) and loss
    frames (`row_frames`); the step's last micro-batch carries the global gradient norm
    (`grad_norm`, before clipping) and, when the anomaly watch raised one, the incident id
    (`anomaly`) and whether the update was skipped (`skipped`)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._log: BatchLogWriter | None = None
        self._step = 0

    def on_train_start(self, trainer, pl_module):
        self._log = BatchLogWriter(self.run_dir, trainer.global_rank)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step = trainer.global_step  # optimizer steps done = the step this micro-batch trains

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: NestBatch, batch_idx):
        if self._log is None:
            raise RuntimeError(
                "batch log: a batch ended before training started (Lightning did not call on_train_start)"
            )
        self._log.append(self._record(trainer, pl_module, batch, stepped=trainer.global_step != self._step))

    def _record(self, trainer, pl_module, batch: NestBatch, stepped: bool) -> dict:
        # the module's own value: Lightning's `outputs` loss is divided by accumulate_grad_batches
        loss = getattr(pl_module, "last_loss", None)
        position = batch.position
        record = {
            "step": self._step,
            "epoch": position.epoch,
            "batch": position.batch,  # the rank's batch number in the epoch (what lookup --batch takes)
            "index": position.index,  # the micro-batch's index in the epoch's sequence (any world size)
            "rank": trainer.global_rank,
            "world_size": position.world_size,
            "consumed_after": position.consumed_after,
            "fingerprint": batch.fingerprint,
            "cut_ids": batch.cut_ids,
            "loss": loss,
            "failures": len(batch.failures),
            "time": round(time.time(), 3),
        }
        step_cost = getattr(pl_module, "step_cost", None)
        if step_cost is not None:  # where the step's wall time went on this rank
            cost = step_cost()
            record.update(data_wait_s=cost.data_wait_s, compute_s=cost.compute_s, peer_wait_s=cost.peer_wait_s)
        record["load_ms"] = [round(ms, 1) for ms in batch.load_ms]  # per row, in cut_ids order
        record.update(self._anomaly_fields(pl_module, stepped))
        return record

    @staticmethod
    def _anomaly_fields(pl_module, stepped: bool) -> dict:
        fields: dict = {}
        rows = getattr(pl_module, "last_rows", None)
        if rows is not None:
            fields["row_loss"], fields["row_frames"] = rounded(rows[2]), rows[3]
        watch = getattr(pl_module, "anomaly_watch", None)
        if watch is not None and stepped:  # the step's last micro-batch: the optimizer step was reached
            if watch.grad_norm is not None:
                fields["grad_norm"] = round(watch.grad_norm, ROW_DIGITS) if math.isfinite(watch.grad_norm) else None
            if watch.anomaly is not None:
                fields["anomaly"] = watch.anomaly
            if watch.skipped:
                fields["skipped"] = True
        return fields

    def log_stopped_step(self, trainer, pl_module, batch: NestBatch) -> None:
        """`anomaly.action: stop` ends training inside the step: its record is written now."""
        if self._log is not None:
            self._log.append({**self._record(trainer, pl_module, batch, stepped=True), "stopped": True})
        self.close()

    def on_train_end(self, trainer, pl_module):
        self.close()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class SegmentLog(Callback):
    """Rank zero records each start or resume: from which step and data position, on how many
    ranks, with which accumulation (runfolder/segments.py)."""

    def __init__(self, run_dir: Path, resumed_from: Path | None, num_workers: int):
        self.run_dir = run_dir
        self.resumed_from = resumed_from
        self.num_workers = num_workers

    def on_train_start(self, trainer, pl_module):
        if trainer.global_rank != 0:
            return
        resumed = getattr(pl_module, "resumed", None)
        position = resumed.position if resumed is not None else DataPosition()
        segment = Segment(
            start_step=trainer.global_step,
            epoch=position.epoch,
            consumed=position.consumed,
            world_size=trainer.world_size,
            accumulate=trainer.accumulate_grad_batches,
            num_workers=self.num_workers,
            time=round(time.time(), 3),
            resumed_from=str(self.resumed_from) if self.resumed_from else None,
        )
        append_segment(self.run_dir, segment)


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
        self.printed = -1

    def on_train_start(self, trainer, pl_module):
        self.printed = trainer.global_step  # a resume has trained nothing yet at its first step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self.printed:  # with gradient accumulation, each micro-batch of a step ends here
            return
        if trainer.global_rank == 0 and (step % self.every == 0 or step == trainer.max_steps):
            self.printed = step
            metrics = trainer.callback_metrics
            parts = [f"step {step}/{trainer.max_steps}"]
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "audio_seconds_per_second"):
                if key in metrics:
                    parts.append(f"{key} {float(metrics[key]):.4g}")
            print("  ".join(parts), flush=True)

    def on_validation_end(self, trainer, pl_module):
        # the step lines show the latest validation; this line shows each one when it is made
        # (the last one comes after the last step line)
        if trainer.global_rank == 0 and not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            parts = [f"validation at step {trainer.global_step}"]
            parts += [f"{key} {float(metrics[key]):.4g}" for key in ("val_loss", "val_acc") if key in metrics]
            print("  ".join(parts), flush=True)
