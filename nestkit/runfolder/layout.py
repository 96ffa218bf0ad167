"""Where each file of a run folder lives. Every path in the run folder is named here, once.

config.yaml                       the resolved config the run used
checkpoints/                      stepN.ckpt, last.ckpt, best-stepN.ckpt
batches/rank<R>.jsonl             per trained micro-batch: position, fingerprint, cut ids, loss
quarantine/rank<R>[-worker<W>].jsonl  unusable samples and noises, one file per writing process
heartbeat/rank<R>.json            per rank, rewritten every second
heartbeat/rank<R>.pulse           the same heartbeat's essentials, memory-mapped (works on a full disk)
heartbeat/rank<R>.phase           its step and phase, rewritten at every phase change (memory-mapped)
heartbeat/<process>.status        per data-loading process: the cut it reads now (memory-mapped)
stacks/<process>.txt              worker stack dumps (SIGUSR1 -> faulthandler)
stall/<N>/                        a stall incident: request, every rank's dump, the report, kills
stragglers.jsonl                  ranks found persistently slower than their peers, while training
monitor/node-<host>.json          the node monitor's view of the ranks' processes (from outside them)
anomalies/incidents.jsonl         training anomalies (loss/gradient spikes, NaN/Inf) with their cuts
anomalies/<id>/                   the repro of a NaN/Inf incident: lines, config, checkpoint, command
csv/, tb/                         Lightning's loggers
learning_curve.png                loss and accuracy drawn from csv/ (tools/plot_demo_curve.py)
previous/<time>/                  an earlier run's files, moved aside when a new run starts here
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_FILE = "config.yaml"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BATCHES_DIR = "batches"
QUARANTINE_DIR = "quarantine"
HEARTBEAT_DIR = "heartbeat"
STACKS_DIR = "stacks"
STALL_DIR = "stall"
STRAGGLERS_FILE = "stragglers.jsonl"
MONITOR_DIR = "monitor"
ANOMALIES_DIR = "anomalies"
PREVIOUS_DIR = "previous"
CSV_DIR, TB_DIR = "csv", "tb"
WANDB_DIR, MLFLOW_DIR = "wandb", "mlruns"  # where the W&B and MLflow loggers write by default
# what a run writes besides its checkpoints: a new run in the same folder must not append to these
RUN_LOGS = (
    BATCHES_DIR,
    QUARANTINE_DIR,
    HEARTBEAT_DIR,
    STACKS_DIR,
    STALL_DIR,
    MONITOR_DIR,
    ANOMALIES_DIR,
    CSV_DIR,
    TB_DIR,
    WANDB_DIR,
    MLFLOW_DIR,
)
LEARNING_CURVE_FILE = "learning_curve.png"  # drawn from csv/: stale once a new run starts
RUN_LOG_FILES = ("segments.jsonl", STRAGGLERS_FILE, LEARNING_CURVE_FILE)  # segments.py: the run's starts and resumes


def config_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CONFIG_FILE


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    return checkpoints_dir(run_dir) / LAST_CHECKPOINT


def batch_log_path(run_dir: str | os.PathLike, rank: int) -> Path:
    return Path(run_dir) / BATCHES_DIR / f"rank{rank}.jsonl"


def quarantine_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / QUARANTINE_DIR


def heartbeat_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / HEARTBEAT_DIR


def heartbeat_path(run_dir: str | os.PathLike, rank: int) -> Path:
    return heartbeat_dir(run_dir) / f"rank{rank}.json"


def pulse_path(run_dir: str | os.PathLike, rank: int) -> Path:
    return heartbeat_dir(run_dir) / f"rank{rank}.pulse"


def phase_mark_path(run_dir: str | os.PathLike, rank: int) -> Path:
    return heartbeat_dir(run_dir) / f"rank{rank}.phase"


def monitor_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / MONITOR_DIR


def node_observation_path(run_dir: str | os.PathLike, host: str) -> Path:
    return monitor_dir(run_dir) / f"node-{host}.json"


def previous_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / PREVIOUS_DIR


def stacks_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / STACKS_DIR


def worker_stack_path(run_dir: str | os.PathLike, rank: int, worker: int, role: str = "") -> Path:
    return stacks_dir(run_dir) / f"{process_name(rank, worker, role)}.txt"


def stall_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / STALL_DIR


def stragglers_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / STRAGGLERS_FILE


def anomalies_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / ANOMALIES_DIR


def process_name(rank: int, worker: int | None, role: str = "") -> str:
    """`rank<R>-worker<W>`, `rank<R>-val-worker<W>` (validation) or `rank<R>-main` (the rank's own process)."""
    return f"rank{rank}-main" if worker is None else f"rank{rank}-{role + '-' if role else ''}worker{worker}"


def quarantine_path(run_dir: str | os.PathLike, rank: int, worker: int | None = None, role: str = "") -> Path:
    """One file per writing process, so that a failed write can be rolled back without touching
    another process's records: `rank<R>.jsonl` for the rank itself, `rank<R>-worker<W>.jsonl`."""
    name = f"rank{rank}" if worker is None else process_name(rank, worker, role)
    return quarantine_dir(run_dir) / f"{name}.jsonl"


def rank_of_file(path: Path) -> int | None:
    """The rank a per-rank file belongs to (`rank3.jsonl`, `rank3-worker1.jsonl` -> 3), or None."""
    head = path.stem.split("-", 1)[0]
    return int(head[4:]) if head.startswith("rank") and head[4:].isdigit() else None


def is_run_folder(path: str | os.PathLike) -> bool:
    """A folder `nestkit train` wrote into: its resolved config and at least one of its logs."""
    path = Path(path)
    return config_path(path).is_file() and any(
        (path / d).is_dir() for d in (BATCHES_DIR, HEARTBEAT_DIR, CHECKPOINTS_DIR)
    )


def learning_curve_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LEARNING_CURVE_FILE


def checkpoint_files(run_dir: str | os.PathLike) -> list[Path]:
    """Every checkpoint of the run (`*.ckpt` under checkpoints/), by name."""
    folder = checkpoints_dir(run_dir)
    return sorted(folder.glob("*.ckpt")) if folder.is_dir() else []


def run_logs(run_dir: str | os.PathLike) -> list[str]:
    """The logs of a run that are there: folders holding any of its files (batches, heartbeat, ...;
    a writer's leftover hidden temporary file does not count) and its segments file."""
    path = Path(run_dir)
    folders = [
        name
        for name in RUN_LOGS
        if (path / name).is_dir() and any(not p.name.startswith(".") for p in (path / name).iterdir())
    ]
    return folders + [name for name in RUN_LOG_FILES if (path / name).is_file()]
