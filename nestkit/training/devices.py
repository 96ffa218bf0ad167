"""Device arithmetic: what `trainer.devices` / `accelerator` / `precision` mean on this machine."""

from __future__ import annotations

from nestkit.config import NestConfig

PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
ALL_DEVICES = (-1, "-1", "auto")  # NeMo's "every GPU"


def lightning_precision(value) -> str:
    """NeMo configs say 32, 16 or bf16; Lightning 2 wants 32-true, 16-mixed, bf16-mixed."""
    return PRECISION_ALIASES.get(str(value), str(value))


def accelerator_and_devices(cfg: NestConfig):
    """(accelerator, devices) for Lightning: -1 means every GPU, or one process on a CPU machine."""
    import torch

    t = cfg.trainer
    gpu = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
    devices = t.devices
    if not gpu and devices in ALL_DEVICES:
        devices = 1
    return ("gpu" if gpu else "cpu") if t.accelerator == "auto" else t.accelerator, devices


def world_size(devices, num_nodes: int) -> int:
    """Processes in the job for Lightning's `devices` and `num_nodes`."""
    if isinstance(devices, list):
        return len(devices) * num_nodes
    if isinstance(devices, int) and devices > 0:
        return devices * num_nodes
    if devices in ALL_DEVICES:
        import torch

        return max(torch.cuda.device_count(), 1) * num_nodes
    return int(devices) * num_nodes if str(devices).isdigit() else num_nodes


def configured_world_size(cfg: NestConfig) -> int:
    _, devices = accelerator_and_devices(cfg)
    return world_size(devices, cfg.trainer.num_nodes)


def is_global_rank_zero() -> bool:
    """Lightning's own rank detection (torchrun's RANK, its launcher's LOCAL_RANK/NODE_RANK, SLURM's
    SLURM_PROCID, ...): under `srun` every task would otherwise think it is rank zero."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0
