"""The NEST LightningModule: training/validation steps on nestkit's data pipeline.

It holds the NestModel as `self.model`, so Lightning checkpoint keys are `model.<NeMo key>`
(`nestkit export-nemo` strips the prefix). Every random draw of a step is a pure function of the
seed and the micro-batch's plan position (epoch e, global micro-batch index
g = batch * world_size + rank): masks, dither and stochastic depth come from the generator
torch_generator(seed, "model", e, g), and dropout's global RNG is re-seeded with
seed_int(seed, "dropout", e, g) before each step. A resumed run, and `replay-batch --forward`,
therefore reproduce a step's loss exactly; with one rank, g is the step number, so NeMo seeded with
torch.manual_seed(seed_int(seed, "model", 0, g)) before its training_step draws the same masks.

Training reads a PlanStream: the planned epochs one after the other, which Lightning sees as one
endless epoch (it counts steps, like NeMo's step-based recipe). The data position is restored from
the plan position of the last trained batch (every batch carries it), so resuming is exact however
far Lightning and the DataLoader had prefetched, and whatever Lightning's epoch counter says.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from nestkit.config import NestConfig
from nestkit.core.rng import seed_int, torch_generator
from nestkit.data.batch import BatchPosition, NestBatch
from nestkit.data.pipeline import DataPipeline, build_pipeline
from nestkit.data.sampler import PlanStream
from nestkit.model.nest import NestModel
from nestkit.model.schedule import build_optimizer, build_scheduler
from nestkit.monitor.loader_watch import WatchedDataLoader
from nestkit.monitor.worker_init import worker_init_for

DATA_POSITION_KEY = "nestkit_data_position"


def micro_batch_index(position: BatchPosition, world_size: int) -> int:
    """g: the micro-batch's index among all ranks' micro-batches of its epoch."""
    return position.batch * world_size + position.rank


def step_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of masks, dither and stochastic depth for micro-batch `index` of `epoch`
    (always on the CPU, so a step draws the same masks on any device)."""
    return torch_generator(seed, "model", epoch, index)


def seed_dropout(seed: int, epoch: int, index: int) -> None:
    torch.manual_seed(seed_int(seed, "dropout", epoch, index))


def training_loss(model: NestModel, batch: NestBatch, seed: int, world_size: int):
    """The training step's forward and loss, as training and `replay-batch --forward` run it."""
    epoch, index = batch.position.epoch, micro_batch_index(batch.position, world_size)
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
        self.resume_at: tuple[int, int] | None = None  # (epoch, next batch) from a checkpoint
        self.last_position: BatchPosition | None = None
        self.empty_mask_batches = 0
        self.bad_samples = 0
        self._step_started = 0.0
        self.stall_watch = None  # nestkit.monitor.stall_watch.StallWatch, set by that callback

    # -- data ---------------------------------------------------------------------------------

    def pipeline(self, split: str) -> DataPipeline:
        if split not in self.pipelines:
            self.pipelines[split] = build_pipeline(
                self.cfg, split, self.global_rank, self.trainer.world_size if self._trainer else 1, self.run_dir
            )
        return self.pipelines[split]

    def train_dataloader(self):
        pipeline = self.pipeline("train")
        stream = PlanStream(pipeline.sampler, self.cfg.trainer.max_epochs)
        if self.resume_at is not None:
            stream.resume(*self.resume_at)
        loader = pipeline.dataloader(
            worker_init_fn=worker_init_for(self.run_dir, self.global_rank), sampler=stream, loader_cls=WatchedDataLoader
        )
        if self.stall_watch is not None:  # heartbeats: what the stream hands out, what comes back
            self.stall_watch.watch_loader(loader, stream)
        return loader

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
        result = training_loss(self.model, batch, self.cfg.nestkit.seed, self.trainer.world_size)
        masked = int(result.num_masked_frames)
        self.empty_mask_batches += masked == 0
        self.bad_samples += len(batch.failures)
        self.last_position = batch.position
        size = len(batch)
        self.log("train_loss", result.loss, prog_bar=True, batch_size=size)
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=False, batch_size=size)
        self.log("masked_frames", float(masked), batch_size=size)
        self.log("empty_mask_batches", float(self.empty_mask_batches), batch_size=size)
        self.log("bad_samples", float(self.bad_samples), batch_size=size)
        return result.loss

    def on_train_batch_start(self, batch, batch_idx):
        self._step_started = time.perf_counter()
        # records a worker could not write (a full disk) are written by this process now
        if "train" in self.pipelines and batch.failures:
            self.pipelines["train"].dataset.quarantine.adopt(batch.failures)

    def on_train_batch_end(self, outputs, batch: NestBatch, batch_idx: int):
        elapsed = time.perf_counter() - self._step_started
        if elapsed > 0:
            self.log("audio_seconds_per_second", batch.audio_seconds / elapsed, batch_size=len(batch))

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
        loss = self.model.loss(output).loss
        self.log("val_loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch))
        return loss

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.cfg.model.optim)
        scheduler = build_scheduler(optimizer, self.cfg.model.optim, self.cfg.trainer.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- exact data position ------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        position = self.last_position
        if position is None:
            return
        # batch may equal the epoch's length: the stream then moves on to the next epoch
        checkpoint[DATA_POSITION_KEY] = {
            "epoch": position.epoch,
            "batch": position.batch + 1,
            "seed": self.cfg.nestkit.seed,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        position = checkpoint.get(DATA_POSITION_KEY)
        if position is not None:
            self.resume_at = (int(position["epoch"]), int(position["batch"]))
