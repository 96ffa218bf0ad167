"""The "collective" phase: when a rank waits for its peers in DDP's gradient all-reduce.

DDP all-reduces gradients inside `backward()`, bucket by bucket, as soon as each bucket's gradients
are ready. A comm hook that wraps PyTorch's default all-reduce lets the heartbeat count buckets
launched and completed; once the last bucket of a step is launched the rank has nothing left to
compute and only waits: that is the "collective" phase, and a rank whose peers never arrive stays
in it. Backend-agnostic (gloo and NCCL), and numerically identical to DDP without a hook.

`collective_state()` adds what the process group itself exposes at dump time: backend, rank,
world size and, for NCCL, PyTorch's flight recorder (set TORCH_NCCL_TRACE_BUFFER_SIZE to enable it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from nestkit.monitor.heartbeat import Heartbeat
from nestkit.runfolder.records import write_bytes

ALL_REDUCE = "all-reduce"  # DDP's gradient all-reduce, inside backward
BUFFER_BROADCAST = "buffer broadcast"  # DDP's broadcast of rank 0's buffers, before each forward
STEP_START_BROADCAST = "step-start broadcast"  # Lightning (>= 2.5) broadcasts a SIGTERM flag before each fetch


def lightning_broadcasts_at_step_start(trainer) -> bool:
    """Lightning's training loop broadcasts rank 0's SIGTERM flag at the start of every step, before
    the batch is fetched: one more collective per step, and where a rank whose peer left waits."""
    return trainer.world_size > 1 and hasattr(type(trainer.fit_loop.epoch_loop), "_broadcast_sigterm_tensor")


def phase_marking_allreduce(heartbeat: Heartbeat):
    """A DDP comm hook: the default all-reduce, with bucket bookkeeping in the heartbeat."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    state = heartbeat.collective

    # no annotations: DDP checks them against real types, and this module's are strings
    def hook(process_group, bucket):
        now = time.time()
        if bucket.index() == 0:  # buckets launch in index order: 0 opens a new round
            state.round += 1
            state.buckets_launched = state.bytes_launched = 0
            state.futures = []
            state.round_started = now
        state.buckets_launched += 1
        state.bytes_launched += bucket.buffer().numel() * bucket.buffer().element_size()
        state.last_launched = now
        future = allreduce_hook(process_group, bucket)
        state.futures.append(future)
        if bucket.is_last():
            heartbeat.enter_collective(ALL_REDUCE)  # backward has no compute left: only peers to wait for
        return future

    return hook


def register(ddp_model, heartbeat: Heartbeat) -> bool:
    """Install the comm hook on a DistributedDataParallel model (before its first backward).

    Returns whether DDP broadcasts buffers at the start of every forward (BatchNorm statistics from
    rank 0, `broadcast_buffers=True`, the default): that broadcast is a collective too, and the
    first one a rank meets when a peer is late with its batch. The caller enters the "collective"
    phase before the forward (`enter_buffer_broadcast`); a pre-hook on the wrapped module marks
    the end of the broadcast, when DDP calls the module itself."""
    if not isinstance(ddp_model, torch.nn.parallel.DistributedDataParallel):
        return False
    heartbeat.collective.backend = dist.get_backend() if dist.is_initialized() else None
    ddp_model.register_comm_hook(None, phase_marking_allreduce(heartbeat))
    syncs_buffers = bool(ddp_model.broadcast_buffers and len(getattr(ddp_model, "modules_buffers", [])))
    if syncs_buffers:

        def broadcast_done(module, args):
            if heartbeat.phase == "collective" and heartbeat.collective.op == BUFFER_BROADCAST:
                heartbeat.set_phase("forward")

        ddp_model.module.register_forward_pre_hook(broadcast_done)
    return syncs_buffers


def collective_state(heartbeat: Heartbeat, out_dir: Path) -> dict:
    """What is known about the rank's collectives, for a stall dump (writes NCCL's trace if any)."""
    info: dict = {
        "comm_hook": heartbeat.collective.as_dict(),
        "initialized": dist.is_available() and dist.is_initialized(),
    }
    if not info["initialized"]:
        return info
    backend = str(dist.get_backend())
    info.update(
        backend=backend,
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        debug_mode=os.environ.get("TORCH_DISTRIBUTED_DEBUG", "OFF"),
    )
    if "nccl" in backend:
        dump = getattr(torch._C._distributed_c10d, "_dump_nccl_trace", None)
        if dump is None:
            info["nccl_flight_recorder"] = "not available in this PyTorch build"
        else:
            try:
                path = out_dir / "nccl_trace.pkl"
                saved = write_bytes(path, dump())  # a full disk is warned about by file name
                info["nccl_flight_recorder"] = str(path) if saved else f"not saved: {path} could not be written"
            except Exception as exc:  # the recorder is off unless TORCH_NCCL_TRACE_BUFFER_SIZE > 0
                info["nccl_flight_recorder"] = (
                    f"unavailable ({type(exc).__name__}: {exc}); set TORCH_NCCL_TRACE_BUFFER_SIZE=2000"
                )
    else:
        info["note"] = (
            f"{backend} exposes no record of pending collectives; the comm hook's bucket counts are what is known"
        )
    return info
