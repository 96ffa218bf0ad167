"""The training DataLoader, watched: what came out of it, its worker pids, and a timeout that names data.

`WatchedDataLoader` is a plain torch DataLoader whose iterator also tells the heartbeat
* that the rank is waiting for data (phase "fetch") and for how long each wait took;
* which batch position came out last (with the PlanStream's record of what went in, that gives
  the batches in flight and the one the rank is waiting for);
* its worker processes' pids (for stack dumps, and to kill them on abort).

torch's `timeout` turns a stuck worker into `RuntimeError: DataLoader timed out after N seconds`,
which names nothing. It is re-raised as a NestkitError naming rank, step, the batch waited for, its
cuts and files, and what each worker was reading; `on_timeout` runs first (the watchdog's stall
report, so every rank's stacks are on disk before this rank goes down).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from nestkit.core.errors import NestkitError
from nestkit.monitor.heartbeat import Heartbeat
from nestkit.runfolder.worker_status import read_slots


class WatchedDataLoader(torch.utils.data.DataLoader):
    watch: Heartbeat | None = None
    on_timeout: Callable[[str], None] | None = None

    def __iter__(self):
        inner = super().__iter__()
        if self.watch is None:
            return inner
        self.watch.workers = [{"worker": i, "pid": w.pid} for i, w in enumerate(getattr(inner, "_workers", []))]
        return _WatchedIterator(inner, self)


class _WatchedIterator:
    def __init__(self, inner, loader: WatchedDataLoader):
        self.inner = inner
        self.loader = loader

    def __iter__(self):
        return self

    def __next__(self):
        heartbeat = self.loader.watch
        heartbeat.set_phase("fetch")
        started = time.monotonic()
        try:
            batch = next(self.inner)
        except RuntimeError as exc:
            if "DataLoader timed out" not in str(exc):
                raise
            message = timeout_message(heartbeat, str(exc), self.loader.timeout)
            if self.loader.on_timeout is not None:
                self.loader.on_timeout(message)
            raise NestkitError(message) from None
        position = getattr(batch, "position", None)
        heartbeat.mark_fetched(
            (position.epoch, position.batch) if position is not None else None, time.monotonic() - started
        )
        return batch

    def __len__(self):
        return len(self.inner)


def describe_cut(cut: dict) -> str:
    where = f"{cut['manifest']}:{cut['line']}" if cut.get("manifest") else "no manifest"
    return f"{cut['cut_id']} ({cut['path']}, {where})"


def timeout_message(heartbeat: Heartbeat, error: str, timeout_s: float) -> str:
    """`rank R step S: DataLoader timed out ...` with the batch waited for, its cuts, and the workers."""
    in_flight = heartbeat.in_flight()
    waiting = next((b for b in in_flight if b["state"] == "loading"), None)
    parts = [
        f"rank {heartbeat.rank} step {heartbeat.step}: DataLoader timed out "
        f"(expected a batch within nestkit.dataloader_timeout_s={timeout_s:g} s, got none)"
    ]
    if waiting is not None:
        parts.append(
            f"Waiting for epoch {waiting['epoch']} batch {waiting['batch']}: "
            + "; ".join(describe_cut(c) for c in waiting["cuts"])
        )
    others = [
        f"{b['batch']} ({'prefetched by Lightning' if b['state'] == 'prefetched' else 'loading'})"
        for b in in_flight
        if b is not waiting
    ]
    if others:
        parts.append(f"Also in flight: batches {', '.join(others)}")
    from nestkit.runfolder.heartbeats import heartbeat_dir

    for slot in read_slots(heartbeat_dir(heartbeat.run_dir), heartbeat.rank):
        if slot.get("state") == "loading":
            held = time.time() - slot.get("since", time.time())
            parts.append(
                f"{slot['slot'].capitalize()} (pid {slot.get('pid')}) reading {slot.get('path')} "
                f"(cut {slot.get('cut_id')}, {slot.get('manifest')}:{slot.get('line')}) for {held:.0f} s"
            )
    parts.append(
        f"A stalled file system or a stuck decoder? Stacks: {heartbeat.run_dir}/stall/; "
        f"run `nestkit stacks {heartbeat.run_dir}`. ({error})"
    )
    return ". ".join(parts)
