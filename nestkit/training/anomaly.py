"""Training anomalies named by their data: loss spikes, exploding gradients and NaN/Inf traced to
cuts, files, noise and modules, with one policy applied identically on every rank.

Per micro-batch the module keeps each utterance's masked-token loss and loss-frame count (one
small host copy next to the loss's own). Per optimizer step, in `on_before_optimizer_step` (after
DDP's gradient all-reduce, before clipping and the update), this callback:

1. computes the global gradient norm (the gradients are already the same on every rank);
2. all-reduces ONE small float64 vector: the frame-weighted loss sum and frame count, the gradient
   norm, the utterances' deviation from the typical loss, and per rank a NaN/Inf flag and its
   worst utterance's robust z-score. Every rank receives the same bits, so the spike detector
   (nestkit.training.spikes), fed only from this vector, decides the same on every rank, and
   nothing later (an incident, a skip, a stop) can leave a rank behind in a collective;
3. on an anomaly: pools the ranks' candidate rows (one all_gather_object, on events only), ranks
   the cuts by their share of the spike, runs the NaN probe on a copy of the model for NaN/Inf,
   saves a checkpoint of the step's starting state for the repro, and applies the policy.

Policy (`nestkit.anomaly.action`):
* warn: record and print, the update is applied.
* skip: the step's gradients are dropped on every rank (set to None: AdamW then leaves weights,
  moments and its step count untouched) and the BatchNorm statistics its forward changed are put
  back. Lightning still counts the step: global_step and the learning-rate schedule advance as if
  it had trained, so step numbers, data positions and the LR of every later step are those of the
  uninterrupted run (the skipped step's LR value is simply unused). Skipped steps are counted
  (metric `skipped_steps`, the batch log's `skipped`).
* stop: every rank saves the state the step started from as last.ckpt (data position before the
  step), the incident says why, and every rank raises AnomalyStop (exit status 4). After listing the
  culprit in `nestkit.exclude_cuts`, `nestkit train --resume` trains that step again with a
  substitute, and the run ends at the same step count.

Under `warn` a NaN/Inf gradient makes the weights NaN: later non-finite steps are counted on the
first incident, not written again.
"""

from __future__ import annotations

import copy
import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
from pytorch_lightning.callbacks import Callback
from torch.nn.modules.batchnorm import _BatchNorm

from nestkit.config import NestConfig, save_config
from nestkit.core.errors import NestkitError
from nestkit.data.batch import BatchPosition, NestBatch
from nestkit.runfolder.anomalies import (
    REPRO_COMMAND,
    REPRO_CONFIG,
    REPRO_MANIFEST,
    REPRO_README,
    IncidentWriter,
    checkpoint_at_or_before,
    incident_id,
    repro_checkpoint,
    repro_dir,
)
from nestkit.runfolder.layout import last_checkpoint
from nestkit.runfolder.records import dumps_line, write_text
from nestkit.training.incident import build_incident, cut_summary, rank_key, verdict
from nestkit.training.spikes import (
    NONFINITE_GRAD,
    NONFINITE_LOSS,
    Signal,
    SpikeDetector,
    StepValues,
    cut_key,
)

if TYPE_CHECKING:  # annotations only: the probe imports what it runs (NanProbe, training_loss) lazily
    from nestkit.model.nest import NestModel

ModelT = TypeVar("ModelT", bound=torch.nn.Module)

ANOMALY_STOP_EXIT_STATUS = 4  # the job ended on purpose because of its data (the watchdog's is 3)
MAX_CUTS_PER_RANK = 20  # candidate rows each rank sends when an incident is pooled
ROW_DIGITS = 4  # decimals of the per-utterance losses in the batch log
ALL_REDUCE_LABEL = "anomaly check all-reduce (one per optimizer step)"


class AnomalyStop(NestkitError):
    """`nestkit.anomaly.action: stop` ended training; raised on every rank at the same step."""

    exit_status = ANOMALY_STOP_EXIT_STATUS


@dataclass
class MicroBatch:
    batch: NestBatch
    loss: float  # the micro-batch's own loss
    frames: int
    row_loss: list[float]
    row_frames: list[int]


def row_values(result) -> tuple[float, int, list[float], list[int]]:
    """(loss, loss frames, per-utterance losses, per-utterance frames) of a LossResult, in one copy
    to the host (the loss's own value was just copied: the device has nothing left to finish)."""
    rows = len(result.row_loss)
    flat = torch.cat(
        (
            result.loss.detach().reshape(1).double(),
            result.num_masked_frames.reshape(1).double(),
            result.row_loss.double(),
            result.row_frames.double(),
        )
    ).tolist()
    return flat[0], int(flat[1]), flat[2 : 2 + rows], [int(f) for f in flat[2 + rows :]]


def rounded(values: list[float]) -> list[float | None]:
    return [round(v, ROW_DIGITS) + 0.0 if math.isfinite(v) else None for v in values]  # + 0.0: no -0.0


class AnomalyWatch(Callback):
    def __init__(self, cfg: NestConfig, run_dir: Path, notify=print):
        self.full_cfg = cfg
        self.cfg = cfg.nestkit.anomaly
        self.run_dir = Path(run_dir)
        self.notify = notify
        self.detector = SpikeDetector(self.cfg)
        self.incidents = 0
        self.skipped_steps = 0
        self.repro_checkpoints = 0
        self.scaler_overflows = 0  # fp16 steps whose gradients overflowed (the GradScaler skipped them)
        self.poisoned: dict | None = None  # {"id", "step"}: a warned NaN/Inf update made the weights NaN
        self._writer: IncidentWriter | None = None
        # the step in progress
        self._step: int | None = None
        self._micro: list[MicroBatch] = []
        self._batch: NestBatch | None = None
        self._start_position: BatchPosition | None = None
        self._norm_stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.step_norm: torch.Tensor | None = None  # this step's global gradient norm, on the device
        # what the batch log records for the step's last micro-batch
        self.grad_norm: float | None = None
        self.anomaly: str | None = None
        self.skipped = False

    # -- Lightning hooks ------------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage: str) -> None:
        pl_module.anomaly_watch = self
        if trainer.global_rank == 0 and self._writer is None:
            self._writer = IncidentWriter(self.run_dir)

    def _incident_writer(self) -> IncidentWriter:
        if self._writer is None:
            raise RuntimeError("anomaly watch: rank 0 has no incident writer (Lightning did not call setup())")
        return self._writer

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self._step:  # the first micro-batch of an optimizer step
            self._step = trainer.global_step
            self._micro = []
            self._start_position = pl_module.last_position  # where the data stood before this step
            self.grad_norm, self.anomaly, self.skipped, self.step_norm = None, None, False, None
            # what the step's forward changes besides gradients: put back by skip, and saved in the
            # step-start checkpoints (a NaN batch leaves NaN running statistics, and eval uses them)
            self._norm_stats = _norm_statistics(pl_module.model)
        self._batch = batch

    def on_after_backward(self, trainer, pl_module) -> None:
        rows = getattr(pl_module, "last_rows", None)
        if rows is not None and self._batch is not None:
            self._micro.append(MicroBatch(self._batch, *rows))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # as torch.nn.utils.clip_grad_norm_ computes it, so that clipping can reuse it (module.py)
        norm = torch.nn.utils.get_total_norm(grads) if grads else None
        self.step_norm = norm
        values = self._reduce(trainer, pl_module, norm)
        self.grad_norm = values.grad_norm
        signals = self.detector.judge(values)
        if signals and [s.kind for s in signals] == [NONFINITE_GRAD] and _loss_scaler(trainer) is not None:
            # fp16 with a GradScaler: an overflow is expected now and then, and the scaler itself
            # skips the update and lowers the scale; counted, not an incident
            self.scaler_overflows += 1
        elif not signals:
            self.detector.update(values)
        elif self.poisoned is not None and all(s.kind in (NONFINITE_LOSS, NONFINITE_GRAD) for s in signals):
            self.anomaly = self.poisoned["id"]  # the consequence of a warned NaN update, not news
        else:
            # checkpoints it saves hold the windows as the step found them; the update follows
            self._incident(trainer, pl_module, optimizer, values, signals, self.detector.typical_loss())
            self.detector.update(values)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        size = len(batch) if isinstance(batch, NestBatch) else 1
        pl_module.log("anomalies", float(self.incidents), batch_size=size)
        pl_module.log("skipped_steps", float(self.skipped_steps), batch_size=size)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._writer is not None:
            self._writer.close()
        if trainer.global_rank == 0 and (self.incidents or self.scaler_overflows):
            skipped = f", {self.skipped_steps} step(s) skipped" if self.skipped_steps else ""
            overflows = (
                f", {self.scaler_overflows} fp16 overflow(s) left to the GradScaler" if self.scaler_overflows else ""
            )
            self.notify(
                f"anomalies: {self.incidents} incident(s){skipped}{overflows}: `nestkit anomalies {self.run_dir}`"
            )

    def state_dict(self) -> dict:
        return {
            "detector": self.detector.state_dict(),
            "incidents": self.incidents,
            "skipped_steps": self.skipped_steps,
            "repro_checkpoints": self.repro_checkpoints,
            "poisoned": self.poisoned,
            "scaler_overflows": self.scaler_overflows,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.detector.load_state_dict(state_dict.get("detector") or {})
        self.incidents = int(state_dict.get("incidents", 0))
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.repro_checkpoints = int(state_dict.get("repro_checkpoints", 0))
        self.poisoned = state_dict.get("poisoned")
        self.scaler_overflows = int(state_dict.get("scaler_overflows", 0))

    # -- the one collective per step ------------------------------------------------------------

    def _reduce(self, trainer, pl_module, norm: torch.Tensor | None) -> StepValues:
        world, rank = trainer.world_size, trainer.global_rank
        detector, repeat_threshold = self.detector, self.cfg.repeat_threshold
        typical, row_score = detector.typical_loss(), detector.row_scorer()
        loss_sum, frames, deviation, judged, nonfinite = 0.0, 0, 0.0, 0, False
        worst, worst_repeat, suspect, suspect_score = 0.0, 0.0, 0, repeat_threshold
        for micro in self._micro:
            loss_sum += (
                micro.loss * micro.frames if micro.frames else (0.0 if math.isfinite(micro.loss) else micro.loss)
            )
            frames += micro.frames
            nonfinite |= not math.isfinite(micro.loss)
            for cut_id, loss, count in zip(micro.batch.cut_ids, micro.row_loss, micro.row_frames):
                nonfinite |= not math.isfinite(loss)
                if typical is None or not detector.judgeable(loss, count):
                    continue
                deviation += abs(loss - typical)
                judged += 1
                score = row_score(loss, count)
                if score is None:
                    continue
                worst = max(worst, score)
                if score > repeat_threshold:
                    key = cut_key(cut_id)
                    if detector.suspect_count(key):
                        worst_repeat = max(worst_repeat, score)
                    if score > suspect_score:
                        suspect, suspect_score = key, score
        # [loss sum, frames, grad norm / world, deviation sum, judged] + per rank: NaN flag, worst
        # score, worst score of a known suspect, key of a new suspect
        vector = torch.zeros(5 + 4 * world, dtype=torch.float64)
        vector[0], vector[1], vector[3], vector[4] = loss_sum, frames, deviation, judged
        vector[5 + rank] = 1.0 if nonfinite else 0.0
        vector[5 + world + rank] = worst
        vector[5 + 2 * world + rank] = worst_repeat
        vector[5 + 3 * world + rank] = float(suspect)  # < 2**53: exact
        device = norm.device if norm is not None else pl_module.device
        vector = vector.to(device)
        if norm is not None:
            vector[2] = norm.double() / world
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            with self._collective(pl_module):
                torch.distributed.all_reduce(vector)
        out = vector.tolist()  # the step's one host synchronisation
        per_rank = [out[5 + k * world : 5 + (k + 1) * world] for k in range(4)]
        return StepValues(
            step=trainer.global_step,
            loss=out[0] / out[1] if out[1] else (out[0] if not math.isfinite(out[0]) else None),
            loss_frames=int(out[1]),
            grad_norm=out[2] if norm is not None else None,
            row_deviation=out[3] / out[4] if out[4] else None,
            nonfinite_ranks=[r for r in range(world) if per_rank[0][r] > 0],
            row_scores=per_rank[1],
            repeat_scores=per_rank[2],
            new_suspects=[int(k) for k in per_rank[3]],
        )

    @contextmanager
    def _collective(self, pl_module):
        """Labelled for the stall watchdog: a rank whose peer is gone waits here."""
        watch = getattr(pl_module, "stall_watch", None)
        heartbeat = getattr(watch, "heartbeat", None)
        if heartbeat is None:
            yield
            return
        previous = heartbeat.phase
        heartbeat.enter_collective(ALL_REDUCE_LABEL)
        try:
            yield
        finally:
            heartbeat.set_phase(previous)

    # -- incidents ------------------------------------------------------------------------------

    def _incident(self, trainer, pl_module, optimizer, values: StepValues, signals: list[Signal], typical) -> None:
        step, world, rank = values.step, trainer.world_size, trainer.global_rank
        ident = incident_id(step)
        nonfinite = signals[0].kind in (NONFINITE_LOSS, NONFINITE_GRAD)
        probe = None
        if nonfinite and (not values.nonfinite_ranks or rank in values.nonfinite_ranks):
            try:
                probe = probe_step(pl_module.model, self._micro, self.full_cfg.nestkit.seed)
            except Exception as exc:  # this rank must still reach the gather below, or its peers wait
                probe = {"rank": rank, "error": f"the NaN probe failed: {type(exc).__name__}: {exc}", "row_keys": []}
        local = self._candidates(rank, typical, probe)
        pooled = _all_gather(local, world)
        action = self.cfg.action
        checkpoint = None
        if nonfinite and self.cfg.repro and self.repro_checkpoints < self.cfg.max_repro_checkpoints:
            checkpoint = repro_checkpoint(self.run_dir, ident, step)
            self._save_step_start(trainer, pl_module, checkpoint)
            self.repro_checkpoints += 1
        outcome = {"warn": "warned", "skip": "skipped", "stop": "stopped"}[action]
        # the same on every rank: built from the pooled candidates
        incident = build_incident(ident, values, signals, typical, pooled, world, outcome)
        if nonfinite and self.cfg.repro:
            incident["repro"] = str(repro_dir(self.run_dir, ident))
        if action == "stop":
            incident["checkpoint"] = str(last_checkpoint(self.run_dir))
        incident["verdict"] = verdict(incident)
        self.incidents += 1
        self.anomaly = ident
        if rank == 0:
            if nonfinite and self.cfg.repro:
                try:
                    write_repro(self.run_dir, self.full_cfg, pl_module.pipeline("train").index, incident, checkpoint)
                except OSError as exc:  # a full disk: the incident itself still gets written
                    incident["repro_error"] = f"the repro folder could not be written: {exc}"
            self._incident_writer().append(incident)
            self.notify(f"nestkit anomaly {ident}: {incident['verdict']}")
        if nonfinite and action == "warn" and not math.isfinite(values.grad_norm or 0.0):
            self.poisoned = {"id": ident, "step": step}
        if action == "skip":
            self._skip(optimizer)
        elif action == "stop":
            self._stop(trainer, pl_module, ident, checkpoint, incident)

    def _candidates(self, rank: int, typical: float | None, probe: dict | None) -> dict:
        """This rank's rows for the incident: the best MAX_CUTS_PER_RANK by excess loss, NaN first."""
        flagged = set(probe["row_keys"]) if probe else set()
        row_score = self.detector.row_scorer()
        rows, positive = [], 0.0
        for micro in self._micro:
            position = micro.batch.position
            for slot, (loss, frames) in enumerate(zip(micro.row_loss, micro.row_frames)):
                key = (position.epoch, position.index, slot)
                finite = math.isfinite(loss)
                excess = frames * (loss - typical) if finite and typical is not None and frames else 0.0
                positive += max(excess, 0.0)
                rows.append(
                    {
                        **cut_summary(micro.batch.records[slot]),
                        "rank": rank,
                        "epoch": position.epoch,
                        "batch": position.batch,  # the rank's batch number (lookup/replay-batch BATCH)
                        "index": position.index,  # in the epoch's sequence
                        "slot": slot,
                        "fingerprint": micro.batch.fingerprint,
                        "loss": round(loss, ROW_DIGITS) if finite else None,
                        "frames": frames,
                        "z": _rounded_score(row_score(loss, frames)),
                        "earlier_high": self.detector.suspect_count(cut_key(micro.batch.cut_ids[slot])),
                        "excess": excess,
                        "nonfinite": key in flagged or not finite,
                        "probe_origin": key in flagged,
                    }
                )
        rows.sort(key=rank_key)
        batches = [
            {
                "rank": rank,
                "epoch": m.batch.position.epoch,
                "batch": m.batch.position.batch,
                "index": m.batch.position.index,
                "fingerprint": m.batch.fingerprint,
            }
            for m in self._micro
        ]
        if probe is not None:
            probe = {k: v for k, v in probe.items() if k != "row_keys"}
        return {"rows": rows[:MAX_CUTS_PER_RANK], "positive": positive, "probe": probe, "batches": batches}

    # -- actions --------------------------------------------------------------------------------

    def _skip(self, optimizer) -> None:
        self.step_norm = None
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        for buffer, saved in self._norm_stats:
            buffer.copy_(saved)
        self.skipped_steps += 1
        self.skipped = True

    def _stop(self, trainer, pl_module, ident: str, repro_ckpt: Path | None, incident: dict) -> None:
        last = last_checkpoint(self.run_dir)
        if repro_ckpt is not None:
            if trainer.global_rank == 0:
                last.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(repro_ckpt, last)
        else:
            self._save_step_start(trainer, pl_module, last)
        log = next((c for c in trainer.callbacks if hasattr(c, "log_stopped_step")), None)
        if log is not None and self._batch is not None:
            log.log_stopped_step(trainer, pl_module, self._batch)
        raise AnomalyStop(
            f"anomaly {ident}: {incident['verdict'].rstrip('.')}. "
            f"Stopped on every rank at step {incident['step']}; the state the step started from is in {last}. "
            f"List the culprit cut ids in a file named by nestkit.exclude_cuts and run `nestkit train --resume` "
            f"to train this step again with substitutes (details: `nestkit anomalies {self.run_dir}`)"
        )

    def _save_step_start(self, trainer, pl_module, path: Path) -> None:
        """Every rank (the save ends with a barrier): the weights before this step's update and the
        data position before its micro-batches, so a resume trains this step again."""
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = pl_module.last_position
        pl_module.last_position = self._position_before_step(pl_module)
        now = [(buffer, buffer.detach().clone()) for buffer, _ in self._norm_stats]
        for buffer, before in self._norm_stats:
            buffer.copy_(before)
        try:
            trainer.save_checkpoint(path, weights_only=False)
        finally:
            pl_module.last_position = saved
            for buffer, after in now:
                buffer.copy_(after)

    def _position_before_step(self, pl_module) -> BatchPosition | None:
        if self._start_position is not None:
            return self._start_position
        resumed = getattr(pl_module, "resumed", None)
        if resumed is None:
            return None  # the run's first step: no position means the start of the data
        # the first step after a resume: the position the run resumed from
        return BatchPosition(resumed.position.epoch, 0, -1, consumed_after=resumed.position.consumed)


def _rounded_score(score: float | None) -> float | None:
    return round(score, 2) if score is not None else None


def _loss_scaler(trainer):
    """The fp16 GradScaler of the run, or None (fp32, bf16)."""
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None)


def _all_gather(obj: dict, world: int) -> list[dict]:
    if world <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out: list = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def _norm_statistics(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) of every BatchNorm statistic (a few values per channel; copied on the device)."""
    cached = _NORM_MODULES.get(id(model))
    if cached is not None and cached[0] is model:
        norms = cached[1]
    else:  # found once per model: walking the modules costs ms
        norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        _NORM_MODULES[id(model)] = (model, norms)
    return [(buffer, buffer.detach().clone()) for module in norms for buffer in module.buffers(recurse=False)]


_NORM_MODULES: dict[int, tuple[torch.nn.Module, list[_BatchNorm]]] = {}


# -- the NaN probe on the step's own batches ------------------------------------------------------


def probe_step(model: NestModel, micro: list[MicroBatch], seed: int) -> dict | None:
    """The first module whose activations or gradients turn non-finite in this rank's micro-batches
    of the step, found by running each again, with the step's seeds, on a copy of the model (the
    live model keeps its gradients and statistics); None when every one is finite here."""
    from nestkit.model.nan_probe import NanProbe
    from nestkit.training.module import training_loss

    probe_model = _local_copy(model)
    for item in micro:
        batch = item.batch
        probe_model.zero_grad(set_to_none=True)
        with torch.enable_grad(), NanProbe(probe_model) as probe:
            result = training_loss(probe_model, batch, seed)
            if result.loss.requires_grad:
                result.loss.backward()
        origin = probe.forward_origin or probe.backward_origin
        if origin is None:
            continue
        size = len(batch)
        slots = sorted({r % size for r in origin.rows or []})  # the preprocessor stacks clean and noisy rows
        position = batch.position
        return {
            "rank": position.rank,
            "epoch": position.epoch,
            "batch": position.batch,
            "index": position.index,
            "fingerprint": batch.fingerprint,
            "module": origin.module,
            "where": origin.where,
            "inputs_finite": origin.inputs_finite,
            "cuts": [batch.cut_ids[s] for s in slots],
            "batch_cuts": [cut_summary(r) for r in batch.records],
            "report": probe.report(),
            "row_keys": [(position.epoch, position.index, s) for s in slots],
        }
    return None


def _local_copy(model: ModelT) -> ModelT:
    """A copy for the probe; SyncBatchNorm becomes BatchNorm: the probe runs on this rank alone
    (as `replay-batch --forward` does) and must not wait for peers that do not probe."""
    clone = copy.deepcopy(model)
    for name, module in list(clone.named_modules()):
        if isinstance(module, torch.nn.SyncBatchNorm):
            plain = torch.nn.BatchNorm1d(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
            )
            plain.load_state_dict(module.state_dict())
            plain.train(module.training)
            parent_name, _, child = name.rpartition(".")
            setattr(clone.get_submodule(parent_name) if parent_name else clone, child, plain)
    return clone


# -- the repro folder -----------------------------------------------------------------------------


def write_repro(run_dir: Path, cfg: NestConfig, index, incident: dict, checkpoint: Path | None) -> Path:
    """anomalies/<id>/: the non-finite micro-batch's manifest lines, the run's config, the checkpoint
    the step started from and the `replay-batch --forward` command that shows the same module."""
    import shlex

    folder = repro_dir(run_dir, incident["id"])
    folder.mkdir(parents=True, exist_ok=True)
    probe = incident.get("nonfinite") or {}
    cuts = probe.get("batch_cuts") or [c for c in incident.get("cuts") or []]
    lines = b"".join(dumps_line(manifest_entry(index, c)) for c in cuts)
    write_text(folder / REPRO_MANIFEST, lines.decode())
    config = folder / REPRO_CONFIG
    save_config(cfg, config)
    rank = probe.get("rank", (incident.get("ranks") or [0])[0])
    # the micro-batch by its rank's batch number: exact also when the step accumulates several
    target = shlex.quote(str(config))
    which = (
        f"{probe['batch']} {target} --epoch {probe['epoch']}"
        if "batch" in probe
        else f"{target} --step {incident['step']}"
    )
    command = (
        f"nestkit replay-batch {which} --rank {rank} --run-dir {shlex.quote(str(Path(run_dir).resolve()))} --forward"
    )
    # past max_repro_checkpoints: an earlier state (a NaN that the data causes shows all the same)
    weights = checkpoint if checkpoint is not None else checkpoint_at_or_before(run_dir, incident["step"])
    if weights is not None:
        command += f" --checkpoint {shlex.quote(str(Path(weights).resolve()))}"
    write_text(folder / REPRO_COMMAND, "#!/bin/sh\n" + command + "\n")
    expected = (
        f"first non-finite {probe.get('where')} in module {probe.get('module')}"
        if probe
        else "no module was non-finite on its own rank (a non-finite gradient after the all-reduce)"
    )
    if weights is not None and Path(weights).name == f"step{incident['step']}.ckpt":
        said = f"Weights: {weights} (the state step {incident['step']} started from: the replay is exact)."
    elif weights is not None:
        said = (
            f"Weights: {weights}, an earlier state than step {incident['step']}'s (nestkit.anomaly.max_repro_checkpoints "
            "were saved already): a NaN that the data causes shows all the same, one that the weights cause may not."
        )
    else:
        said = (
            "No checkpoint was saved (nestkit.anomaly.max_repro_checkpoints reached, and none is older): "
            "the replay runs on freshly initialised weights."
        )
    write_text(
        folder / REPRO_README,
        f"Anomaly {incident['id']} at step {incident['step']}: {', '.join(incident['kinds'])}.\n"
        f"Micro-batch: rank {rank}, epoch {probe.get('epoch')} batch {probe.get('batch')} "
        f"(fingerprint {probe.get('fingerprint')}); its manifest lines: {REPRO_MANIFEST}.\n"
        f"Expected from the replay: {expected}.\n{said}\n\nRun: {command}\n",
    )
    return folder


def manifest_entry(index, cut: dict) -> dict:
    """The manifest line of a cut, with its audio path made absolute (NeMo lines are relative to
    their manifest); a cut not in the index gets a minimal NeMo line."""
    row = index.row_at(cut["manifest"], cut["line"]) if cut.get("manifest") is not None else None
    if row is None:
        return {"audio_filepath": cut.get("path"), "duration": cut.get("duration"), "offset": cut.get("offset")}
    item = dict(index.item(row))
    if index.formats[int(index.source[row])] == "nemo":
        item["audio_filepath"] = cut.get("path")
        item.pop("audio_filename", None)
    return item
