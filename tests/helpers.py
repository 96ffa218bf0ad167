"""Helpers for tests: generated audio and config builders (no network, no bundled data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from nestkit.config import NestConfig, config_from_dict
from nestkit.data.synthetic import noise_like, speech_like, write_manifest, write_wav


def data_config(train: str | list[str], noise: str | list[str] | None = None, **train_ds) -> NestConfig:
    """A validated config whose train_ds reads `train` (and `noise`), with overrides."""
    ds = {
        "manifest_filepath": train if isinstance(train, list) else [train],
        "noise_manifest": ([noise] if isinstance(noise, str) else noise) or [],
        "batch_size": 4,
        "num_workers": 0,
        "min_duration": None,
        "max_duration": None,
    }
    ds.update(train_ds)
    return config_from_dict({"model": {"train_ds": ds}}).config


def write_speech(path: Path, seconds: float, seed: int = 0, sample_rate: int = 16000, **kw) -> str:
    return write_wav(path, speech_like(seconds, seed, sample_rate), sample_rate, **kw)


def write_noise(path: Path, seconds: float, seed: int = 0, kind: str = "pink") -> str:
    return write_wav(path, noise_like(seconds, seed, kind), 16000)


def manifest_of(path: Path, files: list[tuple[str, float]] | list[dict]) -> str:
    entries = [f if isinstance(f, dict) else {"audio_filepath": f[0], "duration": f[1]} for f in files]
    return write_manifest(path, entries)


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def position_coded_wav(path: Path, seconds: float, sample_rate: int = 16000) -> tuple[str, np.ndarray]:
    """A float WAV whose sample i holds i * 1e-6, so any segment names its own positions."""
    samples = (np.arange(int(seconds * sample_rate)) * 1e-6).astype(np.float32)
    sf.write(str(path), samples, sample_rate, subtype="FLOAT")
    return str(path), samples


TINY_MODEL = {
    "num_classes": 64,
    "encoder": {"n_layers": 1, "d_model": 32, "n_heads": 2, "subsampling_conv_channels": 16, "conv_kernel_size": 5},
    "optim": {"sched": {"warmup_steps": 20}},
}


def write_train_config(
    path: Path, train: str, noise: str | None = None, validation: str | None = None, **sections
) -> str:
    """A small training YAML (tiny model, CPU, few steps); `sections` update its top-level keys."""
    import yaml

    ds = {
        "manifest_filepath": train,
        "noise_manifest": noise,
        "batch_size": 2,
        "drop_last": True,
        "num_workers": 0,
        "min_duration": None,
        "max_duration": None,
    }
    model = {**TINY_MODEL, "train_ds": ds}
    if validation:
        model["validation_ds"] = {**ds, "manifest_filepath": validation, "shuffle": False, "drop_last": False}
    cfg = {
        "name": "test-run",
        "model": model,
        "trainer": {"devices": 1, "max_steps": 6, "val_check_interval": 1000, "log_every_n_steps": 1},
        "exp_manager": {
            "exp_dir": str(path.parent / "runs"),
            "checkpoint_callback_params": {"every_n_train_steps": 1000},
        },
        "nestkit": {"seed": 3},
    }
    for key, value in sections.items():
        cfg[key] = _merge(cfg.get(key, {}), value) if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            _merge(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def run_nestkit(
    *args: str, cwd: Path, env: dict | None = None, python: list[str] | None = None, timeout: int = 400
) -> subprocess.CompletedProcess:
    """`nestkit ARGS...` in a fresh process (this tree's code: PYTHONPATH is inherited). `env` values
    of None remove the variable; `python` replaces the interpreter command line."""
    merged = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    command = python or [sys.executable, "-m", "nestkit.cli"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=merged)
