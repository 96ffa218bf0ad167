"""Helpers shared by the model tests: fixture paths, a tiny config, NeMo reference cases."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nestkit.config import ModelConfig, config_from_dict, load_config
from nestkit.model.nest import NestModel

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN_DIR = FIXTURES / "golden"
REFERENCE_DIR = FIXTURES / "nemo_reference"
REFERENCE_CASES = sorted(p.name[: -len(".npz")] for p in REFERENCE_DIR.glob("*.npz"))
PCM_SCALE = 32768.0


def tiny_config(**model: object) -> ModelConfig:
    """A small, fast model config (golden sizes) with `model` settings merged in (nested dicts)."""
    base: dict = {
        "num_classes": 64,
        "encoder": {"d_model": 32, "n_heads": 2, "n_layers": 2, "subsampling_conv_channels": 16},
        "preprocessor": {"dither": 0.0},
    }
    for key, value in model.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return config_from_dict({"model": base}).config.model


def t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array))  # a copy: writable, contiguous, 0-d stays 0-d


@dataclass
class ReferenceCase:
    name: str
    arrays: dict[str, np.ndarray]
    meta: dict
    config: ModelConfig
    state: dict[str, torch.Tensor]

    @property
    def audio(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.arrays
        return (
            t(a["audio_pcm"].astype(np.float32) / PCM_SCALE),
            t(a["audio_len"]),
            t(a["noisy_pcm"].astype(np.float32) / PCM_SCALE),
            t(a["noisy_len"]),
        )

    def model(self) -> NestModel:
        model = NestModel(self.config)
        model.load_state_dict(self.state, strict=True)
        return model.train(self.meta["mode"] == "train")


def load_reference_case(name: str) -> ReferenceCase:
    with np.load(REFERENCE_DIR / f"{name}.npz") as data:
        arrays = {key: data[key] for key in data.files}
    meta = json.loads(str(arrays.pop("meta_json")))
    config = load_config(REFERENCE_DIR / f"{name}.config.yaml").config.model
    stored = torch.load(REFERENCE_DIR / f"{name}.state_dict.pt", weights_only=True)
    # weights were rounded to float16-representable values before NeMo ran, so this is exact
    state = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in stored.items()}
    return ReferenceCase(name, arrays, meta, config, state)
