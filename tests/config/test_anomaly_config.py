"""nestkit.anomaly and nestkit.exclude_cuts: defaults, types, cross-field checks, relative paths."""

from __future__ import annotations

import pytest
import yaml

from nestkit.config import config_from_dict, load_config, save_config
from nestkit.core.errors import ConfigError


def minimal(**nestkit) -> dict:
    return {"model": {"train_ds": {"manifest_filepath": "/data/train.json"}}, "nestkit": nestkit}


def problems_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    return caught.value.problems


def test_defaults_warn_and_judge_after_a_short_warm_up():
    a = config_from_dict(minimal()).config.nestkit.anomaly
    assert a.enabled and a.action == "warn"
    assert (a.window, a.warmup_steps) == (100, 20)
    assert a.loss_threshold == a.grad_norm_threshold == a.row_loss_threshold == 6.0 and a.repeat_threshold == 3.5
    assert config_from_dict(minimal()).config.nestkit.exclude_cuts is None


def test_action_must_be_one_of_the_policies():
    (problem,) = problems_of(minimal(anomaly={"action": "ignore"}))
    assert problem.startswith("nestkit.anomaly.action: wrong type") and "'ignore'" in problem
    for action in ("warn", "skip", "stop"):
        assert config_from_dict(minimal(anomaly={"action": action})).config.nestkit.anomaly.action == action


def test_every_bad_setting_is_named_at_once():
    problems = problems_of(
        minimal(
            anomaly={
                "window": 9,
                "warmup_steps": 1,
                "loss_threshold": 0,
                "grad_norm_threshold": -1,
                "min_row_frames": -1,
            }
        )
    )
    text = "\n".join(problems)
    assert "nestkit.anomaly.window: too short for a median and MAD (expected at least 10 steps, got 9)" in text
    assert "nestkit.anomaly.warmup_steps: too few steps to know what is typical (expected at least 10, got 1)" in text
    assert "nestkit.anomaly.loss_threshold: must be a positive robust z-score (got 0" in text
    assert "nestkit.anomaly.grad_norm_threshold: must be a positive robust z-score (got -1" in text
    assert "nestkit.anomaly.min_row_frames: must not be negative (got -1)" in text
    assert len(problems) == 5


def test_a_repeat_threshold_above_the_first_sight_one_is_refused():
    (problem,) = problems_of(minimal(anomaly={"row_loss_threshold": 4.0, "repeat_threshold": 4.5}))
    assert problem == (
        "nestkit.anomaly.repeat_threshold: above row_loss_threshold, so it would never matter "
        "(expected at most 4.0, got 4.5)"
    )


def test_warm_up_longer_than_the_window_is_refused():
    (problem,) = problems_of(minimal(anomaly={"window": 12, "warmup_steps": 13}))
    assert problem == (
        "nestkit.anomaly.warmup_steps: longer than the window it fills (expected at most window=12, got 13)"
    )


def test_misspelt_key_gets_a_suggestion():
    (problem,) = problems_of(minimal(anomaly={"acton": "skip"}))
    assert problem.startswith("nestkit.anomaly.acton: unknown key. did you mean 'action'?")


def test_exclude_cuts_is_a_path_relative_to_the_yaml(tmp_path):
    folder = tmp_path / "cfgs"
    folder.mkdir()
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump(minimal(exclude_cuts="excluded.txt", anomaly={"action": "skip"})))
    cfg = load_config(path).config
    assert cfg.nestkit.exclude_cuts == str(folder / "excluded.txt")
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml").config == cfg
