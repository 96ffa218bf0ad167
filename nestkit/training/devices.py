"""Device arithmetic: what `trainer.devices` / `accelerator` / `precision` mean on this machine."""

from __future__ import annotations

from typing import Literal, get_args

from nestkit.config import NestConfig
from nestkit.core.errors import ConfigError

# NeMo configs say 32, 16 or bf16 (Lightning 1 names); Lightning 2 wants 32-true, 16-mixed, bf16-mixed
PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}
# Mixed precision only: "-true" half precision (and 64-true) would cast the frozen preprocessor and
# quantizer too, and the targets would change with the setting (nestkit.model.precision)
Precision = Literal["32-true", "bf16-mixed", "16-mixed"]
SUPPORTED_PRECISIONS: tuple[Precision, ...] = get_args(Precision)
ALL_DEVICES = (-1, "-1", "auto")  # NeMo's "every GPU"


def lightning_precision(value, accelerator: str | None = None) -> Precision:
    """trainer.precision as Lightning 2 spells it, or a ConfigError naming the setting.

    float16 autocast needs a GPU: Lightning would quietly train a CPU run in bfloat16 instead, so
    16-mixed on the CPU is refused with the setting that works."""
    precision = PRECISION_ALIASES.get(str(value), str(value))
    if precision not in SUPPORTED_PRECISIONS:
        raise ConfigError(
            [
                f"trainer.precision: unsupported (expected 32, bf16-mixed or 16-mixed (NeMo's 32, bf16, 16), got {value!r}). "
                "Half precision without autocast would cast the frozen quantizer and preprocessor too"
            ]
        )
    if precision == "16-mixed" and accelerator == "cpu":
        raise ConfigError(
            [
                f"trainer.precision: float16 autocast needs a GPU (expected 32 or bf16-mixed on the CPU, got {value!r}). "
                "Set trainer.precision=bf16-mixed for mixed precision on the CPU"
            ]
        )
    return precision


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
