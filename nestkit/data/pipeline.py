"""One data pipeline per (config, split, rank): the single code path for training, `pipeline`,
`lookup` and `replay-batch`.

`build_pipeline` opens the cut indexes of the dataset's corpus and noise (built once, shared by memory
mapping: `nestkit.data.index`), makes the planner/sampler and the dataset, and
`DataPipeline.dataloader()` wraps them in a torch DataLoader (batch_size=None: the sampler yields
whole batches). `DataPipeline.batch(n)` builds batch n in this process, exactly as a worker would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from nestkit.config import DatasetConfig, NestConfig
from nestkit.core.errors import ConfigError
from nestkit.data.batch import NestBatch
from nestkit.data.corpus import Corpus, dataset_corpus, manifest_corpus
from nestkit.data.dataset import NestDataset
from nestkit.data.exclusions import load_exclusions
from nestkit.data.index import CutIndex, open_index
from nestkit.data.plan import BatchingConfig
from nestkit.data.sampler import EpochSampler, Planner
from nestkit.runfolder import worker_status
from nestkit.runfolder.quarantine import Quarantine

SPLITS = ("train", "validation")


@dataclass
class DataPipeline:
    split: str
    config: DatasetConfig
    index: CutIndex
    noise: CutIndex | None
    sampler: EpochSampler
    dataset: NestDataset
    dataloader_timeout_s: float = 0.0

    @property
    def planner(self) -> Planner:
        return self.sampler.planner

    def batch(self, k: int, epoch: int | None = None) -> NestBatch:
        """This rank's micro-batch `k` of the epoch, built in this process (no workers)."""
        return self.dataset[self.sampler.batch_cuts(k, epoch)]

    def dataloader(
        self, num_workers: int | None = None, worker_init_fn=None, sampler=None, loader_cls=torch.utils.data.DataLoader
    ) -> torch.utils.data.DataLoader:
        """A DataLoader over this rank's plan (or over `sampler`, e.g. training's TrainingStream);
        `loader_cls` is a DataLoader subclass (training's WatchedDataLoader)."""
        workers = self.config.num_workers if num_workers is None else num_workers
        extra = {}
        if workers > 0:
            extra = {
                "prefetch_factor": self.config.prefetch_factor,
                "timeout": self.dataloader_timeout_s or 0,
                "worker_init_fn": worker_init_fn or init_loading_worker,
                # forking workers every epoch costs copy-on-write faults on the parent's memory
                "persistent_workers": True,
            }
        return loader_cls(
            self.dataset,
            sampler=self.sampler if sampler is None else sampler,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.config.pin_memory and torch.cuda.is_available(),
            **extra,
        )


def init_loading_worker(worker_id: int) -> None:
    """What every DataLoader worker of a NEST dataset does first (training adds its monitoring)."""
    # Workers decode audio; torch threads in each worker would only fight over the cores.
    torch.set_num_threads(1)
    worker_status.uninstall()  # forked from a rank that loads in-process: not its parent's slot
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, NestDataset):
        info.dataset.quarantine.bind_worker(worker_id)  # its own quarantine file


def dataset_config(cfg: NestConfig, split: str) -> DatasetConfig:
    if split not in SPLITS:
        raise ConfigError([f"split {split!r}: unknown (expected one of {', '.join(SPLITS)})"])
    ds = cfg.model.train_ds if split == "train" else cfg.model.validation_ds
    if ds is None:
        key = "train_ds" if split == "train" else "validation_ds"
        raise ConfigError([f"model.{key}: missing (expected a dataset section with manifest_filepath)"])
    return ds


def build_pipeline(
    cfg: NestConfig,
    split: str = "train",
    rank: int = 0,
    world_size: int = 1,
    run_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
) -> DataPipeline:
    """The data pipeline of `split` for `rank` of `world_size`. The training split is dealt in steps
    of world_size x trainer.accumulate_grad_batches micro-batches, as training deals it.

    `run_dir` receives the quarantine file (None keeps failures in the batches only, e.g. replay).
    Validation plans are pinned to epoch 0 and never shuffled, so every validation sees the same
    batches with the same noise.
    """
    ds = dataset_config(cfg, split)
    if num_workers is not None:
        ds = _replace(ds, num_workers=num_workers)
    index, noise = open_indexes(cfg, ds, split)
    batching = BatchingConfig.from_dataset(ds, source=f"model.{split}_ds")
    if split == "validation":
        batching = _replace(batching, shuffle=False)
    validation = split == "validation"
    sampler = EpochSampler(
        index,
        batching,
        cfg.nestkit.seed,
        rank,
        world_size,
        fixed_epoch=0 if validation else None,
        accumulate=1 if validation else cfg.trainer.accumulate_grad_batches,
    )
    quarantine = Quarantine(Path(run_dir) if run_dir is not None else None, rank, split)
    exclude = cfg.nestkit.exclude_cuts if split == "train" else None
    dataset = NestDataset(
        ds, cfg.nestkit.seed, index, noise, quarantine, split, load_exclusions(exclude, index), exclude
    )
    return DataPipeline(split, ds, index, noise, sampler, dataset, cfg.nestkit.dataloader_timeout_s)


def open_indexes(cfg: NestConfig, ds: DatasetConfig, split: str) -> tuple[CutIndex, CutIndex | None]:
    """The cut indexes of a dataset section's corpus and of its noise manifests.

    Unusable lines raise ManifestProblems (all of them) unless nestkit.skip_bad_manifest_lines.
    """
    where = f"model.{split}_ds" if split == "train" else "model.validation_ds"

    def open_with_settings(corpus: Corpus) -> CutIndex:  # the speech and the noise index alike
        return open_index(
            corpus,
            sampling_rate=int(ds.sample_rate or cfg.model.sample_rate),
            cache_dir=cfg.nestkit.index_cache_dir,
            skip_bad=cfg.nestkit.skip_bad_manifest_lines,
        )

    index = open_with_settings(dataset_corpus(ds, where))
    noise = (
        open_with_settings(manifest_corpus(ds.noise_manifest, f"{where}.noise_manifest")) if ds.noise_manifest else None
    )
    return index, noise


NOTICE_LINES_SHOWN = 10  # skipped lines named in the start-up notice (all are in the quarantine)


def record_skipped_lines(pipeline: DataPipeline, run_dir: str | os.PathLike | None) -> list[str]:
    """Quarantine records (kind "manifest") for every line the index left out, and the notice that says so.

    Called once per run by global rank 0 when nestkit.skip_bad_manifest_lines lets training start anyway.
    """
    notices = []
    for name, index in (("", pipeline.index), (" noise", pipeline.noise)):
        if index is None or not index.problem_count:
            continue
        problems = index.problems
        quarantine = Quarantine(run_dir, 0, pipeline.split)
        for problem in problems:
            quarantine.write(
                {
                    "kind": "manifest",
                    "split": pipeline.split,
                    "manifest": problem.manifest,
                    "line": problem.line,
                    "cut_id": None,
                    "category": "bad_line",
                    "reason": str(problem),
                    "substitute": None,
                },
                announce=False,
            )
        quarantine.close()
        shown = "; ".join(f"{p.manifest}:{p.line} {p.problem}" for p in problems[:NOTICE_LINES_SHOWN])
        more = f"; and {len(problems) - NOTICE_LINES_SHOWN} more" if len(problems) > NOTICE_LINES_SHOWN else ""
        where = f", recorded in {quarantine.path}" if quarantine.path is not None else ""
        notices.append(
            f"{pipeline.split}{name}: {len(problems)} unusable manifest line(s) left out "
            f"(nestkit.skip_bad_manifest_lines){where}: {shown}{more}"
        )
    return notices


def _replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)
