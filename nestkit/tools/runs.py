"""Which run `lookup` and `replay-batch` are about: a training config, a run folder, or none given.

With no target the run is found from where the user stands: the run folder they are in (or below),
else the most recent run folder under ./runs, by the time of its last log write. A run folder
brings its own resolved config (`config.yaml`, written by `nestkit train`); a config finds its run
folder at exp_manager.exp_dir/name. When the config given is not the one the run folder was
trained with, the batch-log comparison would be meaningless, so the differences are named.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from nestkit.config import LoadedConfig, NestConfig, load_config
from nestkit.core.errors import ConfigError, UsageError
from nestkit.core.paths import short_path
from nestkit.runfolder.batch_log import logged_ranks
from nestkit.runfolder.layout import BATCHES_DIR, HEARTBEAT_DIR, QUARANTINE_DIR, config_path, is_run_folder
from nestkit.training.devices import configured_world_size

RUNS_DIR = "runs"  # where `nestkit train` puts run folders unless exp_manager.exp_dir says otherwise
LOG_DIRS = (BATCHES_DIR, HEARTBEAT_DIR, QUARANTINE_DIR)  # written while a run trains
WORLD_KEYS = ("trainer.devices", "trainer.num_nodes")  # overrides that set the world size
MAX_NAMED_DIFFERENCES = 3  # config keys named when a config and a run folder disagree


@dataclass
class Target:
    loaded: LoadedConfig
    run_dir: Path | None  # the run folder whose logs to compare with, when there is one
    found: str | None = None  # how the run folder was found when none was named
    world_size: int | None = None  # set when an override names the world size (trainer.devices/num_nodes)
    notes: list[str] = field(default_factory=list)  # for the user, once, before the answer

    @property
    def config(self) -> NestConfig:
        return self.loaded.config

    def announcement(self) -> str | None:
        """`run folder runs/nest-demo (the most recent under ./runs)`, when the run was found, not named."""
        if self.found is None or self.run_dir is None:
            return None
        return f"run folder {short_path(self.run_dir)} ({self.found})"


def last_log_write(run_dir: str | os.PathLike) -> float:
    """The time of the run's last log write (batch log, heartbeat, quarantine), else of its config."""
    run_dir = Path(run_dir)
    times = []
    for name in LOG_DIRS:
        folder = run_dir / name
        if folder.is_dir():
            for entry in os.scandir(folder):
                try:
                    times.append(entry.stat().st_mtime)
                except OSError:  # removed while we looked
                    pass
    if not times:
        try:
            times.append(config_path(run_dir).stat().st_mtime)
        except OSError:
            times.append(0.0)
    return max(times)


def run_folders_under(folder: str | os.PathLike) -> list[Path]:
    """The run folders directly inside `folder`, the most recently written first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and is_run_folder(p)]
    return sorted(found, key=last_log_write, reverse=True)


def enclosing_run_folder(start: str | os.PathLike) -> Path | None:
    """`start` or the nearest folder above it that is a run folder (standing in checkpoints/ counts)."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if is_run_folder(folder):
            return folder
    return None


def find_run(cwd: str | os.PathLike | None = None) -> tuple[Path, str]:
    """(run folder, how it was found) for a command given no target; UsageError when there is none."""
    cwd = Path(cwd or os.getcwd())
    here = enclosing_run_folder(cwd)
    if here is not None:
        return here, "the run folder you are in"
    runs = cwd / RUNS_DIR
    candidates = run_folders_under(runs)
    if candidates:
        others = f" of {len(candidates)}" if len(candidates) > 1 else ""
        return candidates[0], f"the most recent{others} under ./{RUNS_DIR}"
    where = f"./{RUNS_DIR} has no run folder" if runs.is_dir() else f"there is no ./{RUNS_DIR} folder"
    raise UsageError(
        f"run: none found (expected to stand in a run folder or to find one under ./{RUNS_DIR}; {cwd} is not one and "
        f"{where}). Pass a training config or a run folder, e.g. `nestkit lookup runs/NAME --step 71`"
    )


def open_target(
    target: str | os.PathLike | None,
    overrides: list[str],
    run_dir: str | os.PathLike | None = None,
    world_size: int | None = None,
) -> Target:
    """The config to rebuild batches with and the run folder to compare with.

    `target`: a training config (YAML), a run folder (its config.yaml is loaded), or None (the run
    is found from the working folder). `overrides` apply on top in every case. `run_dir` names
    the run folder explicitly (default: the target's own, or the config's exp_manager.exp_dir/name).
    `world_size` (the option) wins over trainer.devices/num_nodes overrides, which win over the logs.
    """
    found: str | None = None
    own_run: Path | None = None  # the run folder the config came from
    if target is None:
        own_run, found = find_run()
        config_file = config_path(own_run)
    elif Path(target).is_dir():
        own_run = Path(target)
        config_file = config_file_of(own_run)
    elif Path(target).exists():
        config_file = Path(target)
    else:
        raise UsageError(f"target {target}: no such file or folder (expected a training config or a run folder)")
    from_run_folder = own_run is not None
    loaded = load_config(config_file, overrides)
    if not from_run_folder and loaded.config.run_dir.is_dir():
        own_run = loaded.config.run_dir
    chosen = Path(run_dir) if run_dir is not None else own_run
    if chosen is not None and not chosen.is_dir():
        raise UsageError(f"run folder {chosen}: no such folder (expected a folder `nestkit train` wrote)")
    result = Target(loaded, chosen, found, notes=list(loaded.notes))
    if chosen is not None and (overrides or not (from_run_folder and chosen == own_run)):
        result.notes += _trained_with_another_config(loaded.config, chosen)
    if world_size is not None:
        _ask_world_size(result, world_size, "--world-size")
    elif any(o.split("=", 1)[0] in WORLD_KEYS for o in overrides):
        _ask_world_size(result, configured_world_size(loaded.config), "the overrides")
    return result


def _ask_world_size(target: Target, world_size: int, source: str) -> None:
    """A world size asked for (an option, or trainer.devices/num_nodes overrides) wins over what the
    run's logs say; when they differ, the logs describe other batches."""
    target.world_size = world_size
    logged = logged_ranks(target.run_dir) if target.run_dir is not None else []
    if logged and max(logged) + 1 != world_size:
        target.notes.append(
            f"world size {world_size} from {source}, but run folder {short_path(target.run_dir)} logged "
            f"{max(logged) + 1} rank(s): its batch log describes other batches"
        )


def config_file_of(target: str | os.PathLike) -> Path:
    """A config file as given, or the config.yaml of a run folder."""
    path = Path(target)
    if path.is_dir():
        _require_run_folder(path)
        return config_path(path)
    return path


def _require_run_folder(path: Path) -> None:
    if is_run_folder(path):
        return
    inside = run_folders_under(path)
    hint = (
        f"; it holds the run folder(s) {', '.join(short_path(p) for p in inside[:3])}: pass one of them"
        if inside
        else ". Pass a training config or a run folder"
    )
    raise UsageError(
        f"target {path}: a folder but not a run folder (expected {path / 'config.yaml'} and batches/ or checkpoints/, "
        f"as `nestkit train` writes){hint}"
    )


# What decides which cuts a batch holds and its step: differences elsewhere (watchdog, loggers,
# checkpoints) leave the batch log comparable.
DATA_KEYS = ("model.train_ds", "model.sample_rate", "nestkit.seed", "trainer.accumulate_grad_batches")
# how batches are loaded, not what they hold
LOADER_KEYS = tuple(f"model.train_ds.{k}" for k in ("num_workers", "pin_memory", "prefetch_factor", "sample_timeout_s"))


def _trained_with_another_config(cfg: NestConfig, run_dir: Path) -> list[str]:
    """Notes naming the data settings in which `cfg` differs from the run folder's config.yaml."""
    saved = config_path(run_dir)
    if not saved.is_file():
        return []
    try:
        trained = load_config(saved).config
    except ConfigError as exc:
        return [f"run folder {short_path(run_dir)}: its config.yaml does not load ({exc.problems[0]}); not compared"]
    ours, theirs = _flat(dataclasses.asdict(cfg)), _flat(dataclasses.asdict(trained))
    differing = [
        key
        for key in sorted(set(ours) | set(theirs))
        if key.startswith(DATA_KEYS) and key not in LOADER_KEYS and ours.get(key) != theirs.get(key)
    ]
    if not differing:
        return []
    named = ", ".join(f"{k} {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differing[:MAX_NAMED_DIFFERENCES])
    more = f" and {len(differing) - MAX_NAMED_DIFFERENCES} more" if len(differing) > MAX_NAMED_DIFFERENCES else ""
    return [
        f"run folder {short_path(run_dir)} was trained with other data settings ({named}{more}): "
        "its batch log describes other batches. Pass the run folder itself as the target to use its config"
    ]


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
