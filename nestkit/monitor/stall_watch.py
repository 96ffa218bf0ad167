"""Lightning glue: heartbeat phases from the Trainer's hooks, the DDP comm hook, the watchdog.

`StallWatch` is a Callback. Phases come from hooks that bracket each part of a step:

    fetch      WatchedDataLoader.__next__          (the wait for the DataLoader)
    forward    on_train_batch_start
    backward   on_before_backward
    collective the comm hook, once the step's last gradient bucket is launched
    optimizer  on_after_backward                   (DDP's all-reduce has completed by then)
    step_end   on_train_batch_end                  (logging and checkpoint callbacks follow)
    collective on_train_batch_end, with DDP under Lightning >= 2.5: its loop broadcasts a SIGTERM flag
               before the next fetch, so the rest of the step's end is labelled as that collective
    validation on_validation_start .. on_validation_end (each validation batch is progress)
    checkpoint Trainer.save_checkpoint, wrapped    (including its closing barrier)
    finished   on_train_end

The training thread assigns heartbeat attributes and rewrites the phase mark; files are written by
the heartbeat's thread.
Local rank 0 also starts the node monitor (`node_monitor`), a separate process that watches this
node's ranks from outside: what no thread inside a stopped or GIL-bound rank can report.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pytorch_lightning.callbacks import Callback

from nestkit.config import StragglerConfig, WatchdogConfig
from nestkit.monitor import collective, node_monitor
from nestkit.monitor.heartbeat import Heartbeat
from nestkit.monitor.loader_watch import WatchedDataLoader
from nestkit.monitor.stragglers import StragglerWatch
from nestkit.monitor.watchdog import Watchdog
from nestkit.runfolder import worker_status
from nestkit.runfolder.heartbeats import FAILED, FINISHED, heartbeat_dir
from nestkit.runfolder.records import describe_os_error, warn_once

if TYPE_CHECKING:
    from nestkit.data.sampler import TrainingStream

ERROR_KEPT = 1500  # characters kept from each end of a failed rank's error (a worker's traceback ends in its cause)


class StallWatch(Callback):
    def __init__(self, cfg: WatchdogConfig, run_dir: Path, straggler: StragglerConfig | None = None):
        self.cfg = cfg
        self.straggler = straggler
        self.run_dir = Path(run_dir)
        self.heartbeat: Heartbeat | None = None
        self.watchdog: Watchdog | None = None
        self.stream: TrainingStream | None = None
        self.monitor: subprocess.Popen | None = None  # the node monitor process (local rank 0 only)
        self.buffer_broadcast = False
        self.step_start_broadcast = False
        self._before_validation = "step_end"

    # -- set-up -------------------------------------------------------------------------------

    def _live_heartbeat(self) -> Heartbeat:
        """The heartbeat setup("fit") made: every hook below runs after it, within fit."""
        if self.heartbeat is None:
            raise RuntimeError(
                "StallWatch: a training hook ran before setup('fit') made the heartbeat "
                "(expected the callback to watch trainer.fit only)"
            )
        return self.heartbeat

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.heartbeat is not None:
            return
        hb = Heartbeat(self.run_dir, trainer.global_rank, trainer.world_size, trainer.local_rank)
        self.heartbeat = hb
        pl_module.stall_watch = self  # its train_dataloader() calls watch_loader()
        hb.start(self.cfg.heartbeat_interval_s)
        # the watchdog thread also runs with enabled=False: it still answers other ranks' incidents
        self.watchdog = Watchdog(hb, self.cfg)
        if self.straggler is not None and trainer.global_rank == 0 and trainer.world_size > 1:
            self.watchdog.stragglers = StragglerWatch(self.straggler, self.run_dir, self.watchdog.notify)
        self.watchdog.start()
        if trainer.local_rank == 0 and self.cfg.node_monitor:
            self.monitor = node_monitor.launch(self.run_dir, self.cfg.heartbeat_interval_s, self.cfg.py_spy)
        self._wrap_save_checkpoint(trainer)
        self.step_start_broadcast = collective.lightning_broadcasts_at_step_start(trainer)

    def _wrap_save_checkpoint(self, trainer) -> None:
        """Checkpointing gets the slow-phase budget. ModelCheckpoint and SaveLastOnEnd both call
        trainer.save_checkpoint, whose closing barrier is a collective: wrapping the method (on
        this trainer instance only) covers the file write and the barrier."""
        original = trainer.save_checkpoint
        hb = self._live_heartbeat()

        def save_checkpoint(*args, **kwargs):
            previous = hb.phase
            hb.set_phase("checkpoint")
            try:
                return original(*args, **kwargs)
            finally:
                hb.set_phase(previous)

        trainer.save_checkpoint = save_checkpoint

    def watch_loader(self, loader: WatchedDataLoader, stream: TrainingStream) -> None:
        """Called by the module's train_dataloader with the loader and the PlanStream it reads."""
        hb = self._live_heartbeat()
        watchdog = self.watchdog
        if watchdog is None:
            raise RuntimeError("StallWatch: watch_loader ran before setup('fit') started the watchdog")
        hb.stream = self.stream = stream
        loader.watch = hb

        def declare_data_timeout(message: str) -> None:
            watchdog.declare(message, kind="data_timeout")

        loader.on_timeout = declare_data_timeout
        if loader.num_workers == 0:  # the rank loads its own data: it reports what it reads itself
            path = worker_status.slot_path(heartbeat_dir(self.run_dir), hb.rank, None)
            try:
                worker_status.install(path, rank=hb.rank, worker=None)
            except OSError as exc:
                warn_once(path, f"cannot create the rank's status slot ({describe_os_error(exc)})")

    def on_fit_start(self, trainer, pl_module) -> None:
        # DDP wraps the model by now
        self.buffer_broadcast = collective.register(trainer.strategy.model, self._live_heartbeat())

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._hold_if_aborting()

    def _hold_if_aborting(self) -> None:
        """While the watchdog takes the job down, the training thread may see the collective fail
        (a peer exited): let the watchdog finish and exit with its code, not with this error."""
        if self.watchdog is not None and self.watchdog.aborting.is_set():
            threading.Event().wait(self.cfg.dump_grace_s + 60)

    # -- phases -------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        position = getattr(batch, "position", None)
        hb = self._live_heartbeat()
        hb.mark_step_start(
            trainer.global_step,
            (position.epoch, position.batch) if position is not None else None,
            getattr(batch, "records", []),
            getattr(batch, "load_ms", None),
        )
        if self.buffer_broadcast:
            hb.enter_collective(collective.BUFFER_BROADCAST)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._live_heartbeat().set_phase("backward")

    def on_after_backward(self, trainer, pl_module) -> None:
        self._live_heartbeat().set_phase("optimizer")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        hb = self._live_heartbeat()
        hb.mark_step_end(trainer.global_step)
        if self.step_start_broadcast:
            hb.enter_collective(collective.STEP_START_BROADCAST)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning sees one endless epoch: it ends only when the stream does. A stream cut short by
        # NESTKIT_DEBUG_STOP_RANK must end training on this rank (alone: that is the point).
        end = self.stream.data_end if self.stream is not None else None
        if end is not None and end["reason"] == "debug":
            trainer.should_stop = True

    def on_validation_start(self, trainer, pl_module) -> None:
        hb = self._live_heartbeat()
        self._before_validation = hb.phase  # step_end, or startup for the sanity check
        hb.set_phase("validation")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._live_heartbeat().mark_progress()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._live_heartbeat().set_phase(self._before_validation)

    def on_train_end(self, trainer, pl_module) -> None:
        self._live_heartbeat().set_phase("finished")

    # -- end ----------------------------------------------------------------------------------

    def close(self, error: BaseException | None = None) -> None:
        """After trainer.fit: final heartbeat (finished, or failed with the error), threads stopped."""
        if self.heartbeat is None:
            return
        if error is not None:
            self._hold_if_aborting()
        if self.watchdog is not None:
            self.watchdog.stop()
        if error is None:
            self.heartbeat.stop(FINISHED)
        else:
            self.heartbeat.stop(FAILED, _kept(_error_text(error)))
            self._say_why(error)
        worker_status.uninstall()
        if self.monitor is not None:  # it also ends by itself once no rank of this node runs
            node_monitor.stop(self.monitor)
            self.monitor = None

    def _say_why(self, error: BaseException) -> None:
        """One verdict line before the traceback, from the rank that can say it: the cause itself, or
        a rank whose peer died without a word (a dead process prints nothing)."""
        from nestkit.core.errors import NestkitError

        if self.heartbeat is None or isinstance(error, (KeyboardInterrupt, NestkitError)):
            return  # a NestkitError is printed whole by the CLI already
        if self.watchdog is not None and self.watchdog.aborting.is_set():
            return  # the watchdog has printed its verdict
        from nestkit.monitor.stall_report import build_report

        try:
            verdict = build_report(self.run_dir, live=True).verdict
        except Exception as exc:  # the run folder may be unreadable now: the error itself follows anyway
            warn_once(self.run_dir, f"no verdict for this failure ({type(exc).__name__}: {exc})")
            return
        speaks = self.heartbeat.rank in verdict.culprits or verdict.kind == "died"
        if speaks and verdict.kind in ("failed", "died", "collective_mismatch", "stopped"):
            print(
                f"\nnestkit: {verdict.sentence}.\n(run `nestkit stacks {self.run_dir}` for every rank and worker)\n",
                file=sys.stderr,
                flush=True,
            )


def _error_text(error: BaseException) -> str:
    """`Type: message`, followed by the errors that caused it (torch's "exited unexpectedly" hides
    the signal that killed the worker in its cause)."""
    parts = [f"{type(error).__name__}: {error}"]
    cause = error.__cause__
    while cause is not None and len(parts) < 4:
        parts.append(f"caused by {type(cause).__name__}: {cause}")
        cause = cause.__cause__
    return "\n".join(parts)


def _kept(text: str) -> str:
    """A long error's head and tail: a DataLoader worker's traceback names its real cause last."""
    if len(text) <= 2 * ERROR_KEPT:
        return text
    return f"{text[:ERROR_KEPT]}\n[...]\n{text[-ERROR_KEPT:]}"
