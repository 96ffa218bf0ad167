"""The NEST LightningModule: training/validation steps on nestkit's data pipeline.

It holds the NestModel as `self.model`, so Lightning checkpoint keys are `model.<NeMo key>`
(`nestkit export-nemo` strips the prefix). Every random draw of a step is a pure function of the
seed and the micro-batch's plan position (epoch e, the micro-batch's index g in the epoch's
sequence, the same on any world size): masks, dither and stochastic depth come from the generator
torch_generator(seed, "model", e, g), and dropout's global RNG is re-seeded with
seed_int(seed, "dropout", e, g) before each step. A resumed run, and `replay-batch --forward`,
therefore reproduce a step's loss exactly; with one rank, g is the step number, so NeMo seeded with
torch.manual_seed(seed_int(seed, "model", 0, g)) before its training_step draws the same masks.

Training reads a TrainingStream: the planned epochs one after the other, which Lightning sees as
one endless epoch (it counts steps, like NeMo's step-based recipe). The data position saved in a
checkpoint is "micro-batches of the epoch consumed" (nestkit.training.elastic), taken from the
last trained batch (every batch carries its position), so resuming is exact however far Lightning
and the DataLoader had prefetched, on any number of ranks and workers.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from nestkit.config import NestConfig
from nestkit.core.rng import seed_int, torch_generator
from nestkit.data.batch import BatchPosition, NestBatch
from nestkit.data.layout import RunLayout, continued_by, segments_of
from nestkit.data.pipeline import DataPipeline, build_pipeline
from nestkit.data.sampler import DataPosition, TrainingStream
from nestkit.model.nest import NestModel
from nestkit.model.schedule import build_optimizer, build_scheduler
from nestkit.monitor.heartbeat import StepCost
from nestkit.monitor.loader_watch import WatchedDataLoader
from nestkit.monitor.worker_init import worker_init_for
from nestkit.runfolder.segments import Segment
from nestkit.training.anomaly import row_values
from nestkit.training.elastic import DATA_POSITION_KEY, SavedPosition, position_after, saved_position

__all__ = ["DATA_POSITION_KEY", "NestLightningModule", "seed_dropout", "step_generator", "training_loss"]


def step_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of masks, dither and stochastic depth for micro-batch `index` of `epoch`
    (always on the CPU, so a step draws the same masks on any device)."""
    return torch_generator(seed, "model", epoch, index)


def seed_dropout(seed: int, epoch: int, index: int) -> None:
    torch.manual_seed(seed_int(seed, "dropout", epoch, index))


def training_loss(model: NestModel, batch: NestBatch, seed: int):
    """The training step's forward and loss, as training and `replay-batch --forward` run it."""
    epoch, index = batch.position.epoch, batch.position.index
    seed_dropout(seed, epoch, index)
    output = model(
        batch.audio,
        batch.audio_len,
        batch.noisy_audio,
        batch.noisy_audio_len,
        apply_mask=True,
        generator=step_generator(seed, epoch, index),
    )
    return model.loss(output)


class NestLightningModule(pl.LightningModule):
    def __init__(self, cfg: NestConfig, run_dir: str | Path):
        super().__init__()
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.model = NestModel(cfg.model)
        self.pipelines: dict[str, DataPipeline] = {}
        self.resumed: SavedPosition | None = None  # the data position of the checkpoint resumed from
        self.last_position: BatchPosition | None = None
        self.last_loss: float | None = None  # the micro-batch's own loss (not divided by accumulation)
        self.empty_mask_batches = 0
        self.bad_samples = 0
        self._step_started = 0.0
        self.stall_watch = None  # nestkit.monitor.stall_watch.StallWatch, set by that callback
        self.anomaly_watch = None  # nestkit.training.anomaly.AnomalyWatch, set by that callback
        self.last_rows: tuple | None = None  # the last micro-batch's (loss, frames, row losses, row frames)

    # -- data ---------------------------------------------------------------------------------

    def pipeline(self, split: str) -> DataPipeline:
        if split not in self.pipelines:
            self.pipelines[split] = build_pipeline(
                self.cfg, split, self.global_rank, self.trainer.world_size if self._trainer else 1, self.run_dir
            )
        return self.pipelines[split]

    def train_dataloader(self):
        pipeline = self.pipeline("train")
        start = self.resumed.position if self.resumed is not None else DataPosition()
        stream = TrainingStream(
            pipeline.planner,
            self.global_rank,
            self.trainer.world_size,
            self.cfg.trainer.accumulate_grad_batches,
            self.cfg.trainer.max_epochs,
            start,
            batches_before=self._batches_before(pipeline, start),
        )
        loader = pipeline.dataloader(
            worker_init_fn=worker_init_for(self.run_dir, self.global_rank), sampler=stream, loader_cls=WatchedDataLoader
        )
        if self.stall_watch is not None:  # heartbeats: what the stream hands out, what comes back
            self.stall_watch.watch_loader(loader, stream)
        return loader

    def _batches_before(self, pipeline: DataPipeline, start: DataPosition) -> int:
        """Batches this rank took in the start epoch before this segment (read from the run's
        segments), so that its batch numbers go on as `lookup --batch N --rank R` counts them."""
        world, accumulate = self.trainer.world_size, self.cfg.trainer.accumulate_grad_batches
        segment = Segment(self.trainer.global_step, start.epoch, start.consumed, world, accumulate)
        segments = continued_by(segments_of(self.run_dir, world, accumulate) if self.resumed else [], segment)
        layout = RunLayout(pipeline.planner, segments, self.cfg.trainer.max_epochs)
        return layout.rank_batches_before(len(segments) - 1, start.epoch, self.global_rank)

    def val_dataloader(self):
        if self.cfg.model.validation_ds is None:
            return []
        return self.pipeline("validation").dataloader(
            worker_init_fn=worker_init_for(self.run_dir, self.global_rank, "val")
        )

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return (
            batch.to(device)
            if isinstance(batch, NestBatch)
            else super().transfer_batch_to_device(batch, device, dataloader_idx)
        )

    # -- steps --------------------------------------------------------------------------------

    def training_step(self, batch: NestBatch, batch_idx: int):
        result = training_loss(self.model, batch, self.cfg.nestkit.seed)
        masked = int(result.num_masked_frames)
        self.empty_mask_batches += masked == 0
        self.bad_samples += len(batch.failures)
        self.last_position = batch.position
        self.last_loss = float(result.loss.detach())
        self.observe_rows(result)
        size = len(batch)
        self.log("train_loss", result.loss, prog_bar=True, batch_size=size)
        self.log("train_acc", result.accuracy, prog_bar=True, batch_size=size)
        self.log("lr", self._optimizer().param_groups[0]["lr"], prog_bar=False, batch_size=size)
        self.log("masked_frames", float(masked), batch_size=size)
        self.log("empty_mask_batches", float(self.empty_mask_batches), batch_size=size)
        self.log("bad_samples", float(self.bad_samples), batch_size=size)
        return result.loss

    def _optimizer(self):
        optimizer = self.optimizers()
        if isinstance(optimizer, list):  # configure_optimizers returns one
            raise RuntimeError(f"training module: expected one optimizer, got {len(optimizer)}")
        return optimizer

    # -- anomalies: the per-utterance signal (nestkit.training.anomaly judges it) ------------------

    def observe_rows(self, result) -> None:
        """Each utterance's loss and loss frames, for the batch log and the anomaly watch."""
        self.last_rows = row_values(result)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clipping by norm reuses the global gradient norm the anomaly watch took this step: the same
        function on the same gradients, so the same value, computed once instead of twice."""
        norm = self.anomaly_watch.step_norm if self.anomaly_watch is not None else None
        if gradient_clip_val and (gradient_clip_algorithm or "norm") == "norm" and norm is not None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_batch_start(self, batch, batch_idx):
        self._step_started = time.perf_counter()
        # records a worker could not write (a full disk) are written by this process now
        if "train" in self.pipelines and batch.failures:
            self.pipelines["train"].dataset.quarantine.adopt(batch.failures)

    def on_train_batch_end(self, outputs, batch: NestBatch, batch_idx: int):
        cost = self.step_cost()
        size = len(batch)
        self.log("data_wait_s", cost.data_wait_s, batch_size=size)
        self.log("compute_s", cost.compute_s, batch_size=size)
        self.log("peer_wait_s", cost.peer_wait_s, batch_size=size)
        if cost.wall_s > 0:  # over the step's wall time: a run that waits for its data shows it
            self.log("audio_seconds_per_second", batch.audio_seconds / cost.wall_s, batch_size=size)

    def step_cost(self) -> StepCost:
        """Where the micro-batch just trained spent its time: the heartbeat's account (it sees the
        DataLoader waits and the collectives), or this module's own clock when nothing watches."""
        watch = self.stall_watch
        heartbeat = getattr(watch, "heartbeat", None)
        if heartbeat is not None and heartbeat.timing.last is not None:
            return heartbeat.timing.last
        return StepCost(0.0, time.perf_counter() - self._step_started, 0.0)

    def validation_step(self, batch: NestBatch, batch_idx: int):
        # NeMo's inference_pass masks too; its generator depends on the batch only, so every
        # validation sees the same masks and val_loss values stay comparable.
        output = self.model(
            batch.audio,
            batch.audio_len,
            batch.noisy_audio,
            batch.noisy_audio_len,
            apply_mask=True,
            generator=torch_generator(self.cfg.nestkit.seed, "validation", batch_idx, self.global_rank),
        )
        result = self.model.loss(output)
        self.log("val_loss", result.loss, prog_bar=True, sync_dist=True, batch_size=len(batch))
        # weighted by scored frames: val_acc is the accuracy over all of validation's loss frames
        targets = max(1, int(result.num_targets))
        self.log("val_acc", result.accuracy, prog_bar=True, sync_dist=True, batch_size=targets)
        return result.loss

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.cfg.model.optim)
        scheduler = build_scheduler(optimizer, self.cfg.model.optim, self.cfg.trainer.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- exact data position ------------------------------------------------------------------

    def data_position(self) -> DataPosition | None:
        """Where training continues after the last trained step (None before the first)."""
        position = self.last_position
        if position is None or position.consumed_after is None:
            return None
        length = len(self.pipeline("train").planner.sequence(position.epoch))
        return position_after(position.epoch, position.consumed_after, length)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        position = self.data_position()
        if position is None:
            return
        saved = SavedPosition(
            position,
            self.trainer.world_size,
            self.cfg.trainer.accumulate_grad_batches,
            self.pipeline("train").planner.signature(),
            self.trainer.global_step,
        )
        checkpoint[DATA_POSITION_KEY] = saved.as_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.resumed = saved_position(checkpoint)
