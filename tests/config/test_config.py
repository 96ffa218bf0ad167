"""The config package on its own: schema defaults, coercion, derived fields, cross-field checks,
loading (YAML errors, overrides, relative paths) -- every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nestkit.config import config_from_dict, load_config, save_config
from nestkit.core.errors import ConfigError

FIXTURES = Path(__file__).parents[1] / "fixtures"


def minimal(**model) -> dict:
    return {"model": {"train_ds": {"manifest_filepath": "/data/train.json"}, **model}}


def problems_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    return caught.value.problems


def test_defaults_are_nemos_nest_fast_conformer():
    cfg = config_from_dict(minimal()).config
    m = cfg.model
    assert (m.sample_rate, m.num_classes, m.num_books, m.code_dim) == (16000, 8192, 1, 16)
    assert (m.preprocessor.features, m.preprocessor.n_fft, m.preprocessor.window_stride) == (80, 512, 0.01)
    assert (m.masking.block_size, m.masking.mask_prob) == (40, 0.01)
    assert (m.encoder.d_model, m.encoder.n_layers, m.encoder.subsampling_factor) == (512, 17, 8)
    assert m.train_ds.batch_augmentor.prob == 0.5 and m.train_ds.drop_last is False
    # NeMo's exp_manager defaults: nothing to resume is an error unless resume_ignore_no_checkpoint
    assert (cfg.exp_manager.resume_if_exists, cfg.exp_manager.resume_ignore_no_checkpoint) == (False, False)


def test_the_node_monitor_can_be_turned_off_and_takes_only_a_boolean():
    assert (
        config_from_dict({"nestkit": {"watchdog": {"node_monitor": False}}}).config.nestkit.watchdog.node_monitor
        is False
    )
    with pytest.raises(ConfigError, match=r"nestkit.watchdog.node_monitor: wrong type"):
        config_from_dict({"nestkit": {"watchdog": {"node_monitor": "sometimes"}}})


def test_derived_fields_follow_the_fields_they_depend_on():
    cfg = config_from_dict(minimal(num_classes=64, num_books=3, encoder={"d_model": 96, "n_heads": 4})).config
    m = cfg.model
    assert (m.decoder.feat_in, m.decoder.num_classes, m.decoder.num_decoders) == (96, 64, 3)
    assert (m.quantizer.num_classes, m.quantizer.num_books, m.quantizer.combine_time_steps) == (64, 3, 8)
    assert m.optim.sched.d_model == 96 and m.optim.sched.max_steps == cfg.trainer.max_steps
    assert m.train_ds.sample_rate == 16000 and cfg.exp_manager.name == cfg.name


def test_every_problem_is_reported_at_once_with_a_suggestion():
    problems = problems_of(
        {
            "model": {
                "train_ds": {"manifest_filepath": "/x.json", "batch_size": "eight", "num_workres": 2},
                "encoder": {"d_modle": 256},
                "masking": {"mask_prob": 2.0},
            },
            "trainer": {"accumulate_grad_batches": 0},
        }
    )
    text = "\n".join(problems)
    assert "model.train_ds.batch_size: wrong type (expected int | null, got 'eight')" in text
    assert "model.train_ds.num_workres: unknown key. did you mean 'num_workers'?" in text
    assert "model.encoder.d_modle: unknown key. did you mean 'd_model'?" in text
    assert len(problems) == 3  # cross-field checks wait until every key is valid


def test_cross_field_problems_all_reported():
    problems = problems_of(
        {
            **minimal(masking={"mask_prob": 2.0}, encoder={"d_model": 100, "n_heads": 8}),
            "trainer": {"accumulate_grad_batches": 0},
        }
    )
    assert any(p.startswith("model.masking.mask_prob: must be in [0, 1]") for p in problems)
    assert any(p.startswith("model.encoder: d_model must be divisible by n_heads") for p in problems)
    assert any(p.startswith("trainer.accumulate_grad_batches: must be at least 1") for p in problems)


def test_nemo_keys_with_no_effect_are_noted_and_impossible_ones_refused():
    loaded = config_from_dict(minimal(train_ds={"manifest_filepath": "/x.json", "shuffle_n": 100}))
    assert any(n.startswith("model.train_ds.shuffle_n=100 has no effect") for n in loaded.notes)
    assert any(
        "trim_silence: not supported" in p
        for p in problems_of(minimal(train_ds={"manifest_filepath": "/x", "trim_silence": True}))
    )


def test_target_classes_are_checked():
    ok = minimal(encoder={"_target_": "nemo.collections.asr.modules.ConformerEncoder"})
    config_from_dict(ok)
    bad = minimal(encoder={"_target_": "nemo.collections.asr.modules.SqueezeformerEncoder"})
    assert any("model.encoder._target_: unsupported class" in p for p in problems_of(bad))


def test_nemos_own_yaml_loads_unchanged_with_interpolations(tmp_path):
    cfg = load_config(
        FIXTURES / "nemo_nest_fast_conformer.yaml",
        ["model.train_ds.manifest_filepath=train.json", "model.validation_ds.manifest_filepath=dev.json"],
    ).config
    assert cfg.model.encoder.d_model == cfg.model.decoder.feat_in
    assert cfg.model.train_ds.manifest_filepath == [str(Path.cwd() / "train.json")]


def test_relative_paths_are_relative_to_the_yaml_and_overrides_to_the_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "cfgs"
    folder.mkdir()
    path = folder / "c.yaml"
    path.write_text(
        yaml.safe_dump(minimal(train_ds={"manifest_filepath": "data/train.json", "noise_manifest": "n.json"}))
    )
    cfg = load_config(path).config
    assert cfg.model.train_ds.manifest_filepath == [str(folder / "data/train.json")]
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path, ["model.train_ds.noise_manifest=other.json"]).config
    assert cfg.model.train_ds.noise_manifest == [str(tmp_path / "other.json")]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model:\n\ttrain_ds: x\n", ":2:1: YAML syntax error: found character that cannot start any token"),
        ("model: [a\n", ":2:1: YAML syntax error: did not find expected ',' or ']'"),
    ],
)
def test_yaml_syntax_errors_name_file_line_and_column(tmp_path, text, expected):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems[0].startswith(str(path) + expected)
    if "\t" in text:
        assert "not tabs" in caught.value.problems[0]


def test_override_errors_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    with pytest.raises(ConfigError, match="override 'trainer.max_steps': expected dotted.key=value"):
        load_config(path, ["trainer.max_steps"])
    with pytest.raises(ConfigError, match="trainer.max_steps: wrong type"):
        load_config(path, ["trainer.max_steps=many"])


def test_a_saved_config_loads_back_to_the_same_values(tmp_path):
    cfg = config_from_dict(minimal(num_books=2)).config
    save_config(cfg, tmp_path / "saved.yaml")
    again = load_config(tmp_path / "saved.yaml").config
    assert again == cfg
