"""nestkit.straggler: defaults, overrides from YAML, and every bad value reported at once by key."""

from __future__ import annotations

import pytest

from nestkit.config import config_from_dict
from nestkit.core.errors import ConfigError


def _config(straggler: dict):
    return config_from_dict(
        {"model": {"train_ds": {"manifest_filepath": "/data/train.json"}}, "nestkit": {"straggler": straggler}}
    )


def test_defaults_warn_on_a_rank_half_again_slower_after_three_checks():
    s = _config({}).config.nestkit.straggler
    assert (s.enabled, s.factor, s.min_excess_s, s.min_steps, s.checks, s.check_interval_s) == (
        True,
        1.5,
        0.05,
        10,
        3,
        10.0,
    )


def test_values_are_read_and_coerced():
    s = _config({"factor": 3, "checks": 1, "check_interval_s": "2.5", "enabled": False}).config.nestkit.straggler
    assert (s.factor, s.checks, s.check_interval_s, s.enabled) == (3.0, 1, 2.5, False)


def test_every_bad_value_is_named_by_its_key():
    with pytest.raises(ConfigError) as caught:
        _config({"factor": 1.0, "min_excess_s": -1, "min_steps": 0, "checks": 0, "check_interval_s": 0})
    problems = "\n".join(caught.value.problems)
    for key in ("factor", "min_excess_s", "min_steps", "checks", "check_interval_s"):
        assert f"nestkit.straggler.{key}:" in problems, problems
    assert len(caught.value.problems) == 5


def test_a_misspelt_key_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError) as caught:
        _config({"factr": 2})
    assert "nestkit.straggler.factr" in str(caught.value) and "factor" in str(caught.value)
