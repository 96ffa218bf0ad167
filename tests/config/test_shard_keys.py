"""NeMo's keys for sharded data (shar_path, is_tarred, tarred_audio_filepaths) and nestkit's index keys:
what each accepts, which go together, and how their paths are resolved."""

from __future__ import annotations

import pytest
import yaml

from nestkit.config import config_from_dict, load_config
from nestkit.config.coerce import split_list
from nestkit.core.errors import ConfigError


def dataset(**keys) -> dict:
    return {"model": {"train_ds": {"batch_size": 2, **keys}}}


def problems_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    return caught.value.problems


@pytest.mark.parametrize(
    "shar_path",
    [
        "/data/shar",
        ["/data/a", "/data/b"],
        [["/data/a", 1000], ["/data/b", 2000.5]],
        {"cuts": "/d/cuts._OP_000000..000003_CL_.jsonl.gz", "recording": ["/d/recording.000000.tar"]},
    ],
)
def test_every_form_of_shar_path_nemo_takes_is_accepted_without_a_manifest(shar_path):
    ds = config_from_dict(dataset(shar_path=shar_path)).config.model.train_ds
    assert ds.shar_path == shar_path and ds.manifest_filepath == []


@pytest.mark.parametrize(
    "shar_path, problem",
    [
        ([["/a", 1], "/b"], "give a weight for every directory or for none"),
        ([["/a", -1]], "item 0: expected a directory or [directory, positive weight]"),
        ({"cuts": "/c.jsonl.gz"}, "a mapping needs 'cuts' and 'recording'"),
        (3, "expected a directory, a list of directories"),
    ],
)
def test_a_shar_path_nemo_would_refuse_is_named(shar_path, problem):
    problems = problems_of(dataset(shar_path=shar_path))
    assert any(p.startswith("model.train_ds.shar_path: ") and problem in p for p in problems), problems


def test_tarred_keys_go_together():
    ok = dataset(manifest_filepath="/t/m.json", is_tarred=True, tarred_audio_filepaths="/t/audio__OP_0..3_CL_.tar")
    ds = config_from_dict(ok).config.model.train_ds
    assert ds.is_tarred and ds.tarred_audio_filepaths == "/t/audio__OP_0..3_CL_.tar"
    assert any(
        "model.train_ds.tarred_audio_filepaths: required with is_tarred: true" in p
        for p in problems_of(dataset(manifest_filepath="/m.json", is_tarred=True))
    )
    assert any(
        "model.train_ds.is_tarred: must be true when tarred_audio_filepaths is set" in p
        for p in problems_of(dataset(manifest_filepath="/m.json", tarred_audio_filepaths="/a_0.tar"))
    )
    both = dataset(shar_path="/s", is_tarred=True, tarred_audio_filepaths="/a_0.tar", manifest_filepath="/m.json")
    assert any("set shar_path or is_tarred, not both" in p for p in problems_of(both))
    assert any("manifest_filepath: required" in p for p in problems_of(dataset()))


def test_nemo_tarred_options_with_no_effect_are_noted():
    loaded = config_from_dict(
        dataset(
            manifest_filepath="/t/m.json",
            is_tarred=True,
            tarred_audio_filepaths=["/t/audio_0.tar"],
            shard_strategy="replicate",
        )
    )
    assert any(n.startswith("model.train_ds.shard_strategy='replicate' has no effect") for n in loaded.notes)


def test_shard_paths_resolve_against_the_yaml_and_urls_and_patterns_stay(tmp_path):
    folder = tmp_path / "cfg"
    folder.mkdir()
    path = folder / "c.yaml"
    data = dataset(
        manifest_filepath="tars/manifest_{0,1}.json",
        is_tarred=True,
        tarred_audio_filepaths="http://store:8000/corpus/audio__OP_0..1_CL_.tar",
    )
    data["model"]["validation_ds"] = {"batch_size": 2, "shar_path": [["shar", 1.0]]}
    data["nestkit"] = {"index_cache_dir": "cache", "skip_bad_manifest_lines": True}
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path).config
    assert cfg.model.train_ds.manifest_filepath == [str(folder / "tars/manifest_{0,1}.json")]  # one pattern
    assert cfg.model.train_ds.tarred_audio_filepaths == "http://store:8000/corpus/audio__OP_0..1_CL_.tar"
    assert cfg.model.validation_ds.shar_path == [[str(folder / "shar"), 1.0]]
    assert cfg.nestkit.index_cache_dir == str(folder / "cache") and cfg.nestkit.skip_bad_manifest_lines
    dict_form = dataset(shar_path={"cuts": "s/cuts.000000.jsonl.gz", "recording": "s/recording.000000.tar"})
    path.write_text(yaml.safe_dump(dict_form))
    assert load_config(path).config.model.train_ds.shar_path == {
        "cuts": str(folder / "s/cuts.000000.jsonl.gz"),
        "recording": str(folder / "s/recording.000000.tar"),
    }


def test_comma_lists_keep_brace_patterns_whole():
    assert split_list("a.json, b.json") == ["a.json", "b.json"]
    assert split_list("m_{0,1}.json,x_(0,1).json") == ["m_{0,1}.json", "x_(0,1).json"]
    assert split_list("audio__OP_0,1_CL_.tar,b.tar") == ["audio__OP_0,1_CL_.tar", "b.tar"]


def test_an_empty_index_cache_dir_is_refused():
    problems = problems_of({**dataset(manifest_filepath="/m.json"), "nestkit": {"index_cache_dir": ""}})
    assert any(p.startswith("nestkit.index_cache_dir: empty") for p in problems)
