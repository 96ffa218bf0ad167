"""trainer / exp_manager values that Lightning would refuse with a traceback (or accept and misbehave
on) are config problems, reported with every other one before anything starts."""

from __future__ import annotations

import pytest

from nestkit.config import config_from_dict
from nestkit.core.errors import ConfigError


def problems_of(trainer: dict | None = None, exp_manager: dict | None = None) -> list[str]:
    data = {"model": {"train_ds": {"manifest_filepath": "/data/train.json"}}}
    data |= {"trainer": trainer or {}, "exp_manager": exp_manager or {}}
    try:
        config_from_dict(data)
    except ConfigError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize("devices", [1, 8, -1, "auto", "-1", "2", "0,1", "1,", [0], [0, 3]])
def test_every_form_of_devices_lightning_accepts_is_accepted(devices):
    assert problems_of({"devices": devices}) == []


@pytest.mark.parametrize(
    "devices, expected",
    [
        (-3, "trainer.devices: expected at least 1, or -1 for every GPU (got -3)"),
        (0, "trainer.devices: expected at least 1, or -1 for every GPU (got 0)"),
        (
            "abc",
            "trainer.devices: expected a number >= 1, -1 or 'auto' for every GPU, or GPU ids like '0,1' (got 'abc')",
        ),
        ("0", "trainer.devices: expected a number >= 1"),
        ([], "trainer.devices: expected at least one GPU id (got [])"),
        ([0, 0], "trainer.devices: expected each GPU id once (got [0, 0])"),
        ([-1, 2], "trainer.devices: expected GPU ids >= 0 (got [-1, 2])"),
    ],
)
def test_devices_no_machine_has_are_refused(devices, expected):
    [problem] = problems_of({"devices": devices})
    assert problem.startswith(expected)


def test_checkpoint_and_trainer_values_lightning_refuses_are_all_reported():
    problems = problems_of(
        trainer={
            "num_nodes": 0,
            "precision": "fp8",
            "gradient_clip_val": -1.0,
            "log_every_n_steps": -1,
            "val_check_interval": 0,
            "limit_val_batches": -1,
            "limit_train_batches": 1.5,
        },
        exp_manager={"checkpoint_callback_params": {"every_n_train_steps": -1, "save_top_k": -2, "keep_periodic": -5}},
    )
    expected = [
        "trainer.num_nodes: must be at least 1 (got 0)",
        "trainer.precision: unknown (expected one of 16, 32, 64, bf16,",
        "trainer.gradient_clip_val: must not be negative, 0 = no clipping (got -1.0)",
        "trainer.log_every_n_steps: must not be negative, 0 = no metric logging (got -1)",
        "trainer.val_check_interval: expected a number of steps >= 1 or a fraction of an epoch in (0, 1] (got 0)",
        "trainer.limit_train_batches: expected a fraction in [0, 1] or a whole count (got 1.5)",
        "trainer.limit_val_batches: expected a count >= 0 (got -1)",
        "exp_manager.checkpoint_callback_params.every_n_train_steps: must be a number of steps >= 1, or 0 / null for no periodic checkpoints (got -1)",
        "exp_manager.checkpoint_callback_params.save_top_k: best checkpoints kept, must be >= 0, or -1 for all (got -2)",
        "exp_manager.checkpoint_callback_params.keep_periodic: periodic checkpoints kept, must be >= 0, or -1 for all (got -5)",
    ]
    assert len(problems) == len(expected)
    for start in expected:
        assert any(p.startswith(start) for p in problems), start


def test_nemos_logger_switches_are_keys_not_refusals():
    assert (
        problems_of(
            exp_manager={
                "create_wandb_logger": True,
                "wandb_logger_kwargs": {"name": "nest", "project": "ssl"},
                "create_mlflow_logger": True,
                "mlflow_logger_kwargs": {
                    "experiment_name": "nest",
                    "tracking_uri": "file:/tmp/mlruns",
                    "tags": {"a": 1},
                },
            }
        )
        == []
    )
    [problem] = problems_of(exp_manager={"mlflow_logger_kwargs": {"tracking_url": "file:/x"}})
    assert problem.startswith(
        "exp_manager.mlflow_logger_kwargs.tracking_url: unknown key. did you mean 'tracking_uri'?"
    )
