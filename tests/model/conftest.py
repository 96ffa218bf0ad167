"""Fixtures for the model tests: NeMo's golden tensors (tests/fixtures/golden)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_testing import GOLDEN_DIR

from nestkit.config import ModelConfig, load_config
from nestkit.model.nest import NestModel


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / "nest_tiny.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def golden_config() -> ModelConfig:
    return load_config(GOLDEN_DIR / "nest_tiny.config.yaml").config.model


@pytest.fixture(scope="session")
def golden_state() -> dict[str, torch.Tensor]:
    return torch.load(GOLDEN_DIR / "nest_tiny.state_dict.pt", weights_only=True)


@pytest.fixture
def golden_model(golden_config, golden_state) -> NestModel:
    model = NestModel(golden_config)
    model.load_state_dict(golden_state, strict=True)
    return model.eval()
