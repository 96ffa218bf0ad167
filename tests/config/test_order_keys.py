"""The epoch order of a dataset section (`order`, `shard_window`): global by default, shards only where there
are shards, every wrong value named."""

from __future__ import annotations

import pytest

from nestkit.config import config_from_dict
from nestkit.core.errors import ConfigError
from nestkit.data.plan import BatchingConfig

TARRED = {"manifest_filepath": "/t/m.json", "is_tarred": True, "tarred_audio_filepaths": "/t/audio__OP_0..3_CL_.tar"}


def train_ds(**keys):
    return config_from_dict({"model": {"train_ds": {"batch_size": 2, **keys}}}).config.model.train_ds


def problems_of(**keys) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        train_ds(**keys)
    return caught.value.problems


def test_the_order_is_global_unless_asked():
    ds = train_ds(manifest_filepath="/m.json")
    assert (ds.order, ds.shard_window) == ("global", 4)
    assert BatchingConfig.from_dataset(ds).settings()["order"] == "global"


@pytest.mark.parametrize("corpus", [{"shar_path": "/data/shar"}, TARRED])
def test_the_shards_order_is_taken_on_a_sharded_corpus(corpus):
    ds = train_ds(order="shards", shard_window=2, **corpus)
    batching = BatchingConfig.from_dataset(ds)
    assert (batching.order, batching.shard_window) == ("shards", 2)
    assert {"order": "shards", "shard_window": 2}.items() <= batching.settings().items()


def test_the_shards_order_on_per_file_manifests_is_refused_with_what_to_do():
    [problem] = problems_of(manifest_filepath="/m.json", order="shards")
    assert problem.startswith("model.train_ds.order: 'shards' needs a sharded corpus (expected shar_path or is_tarred")
    assert "got per-file manifests" in problem and "order: global" in problem and "nestkit shard" in problem


@pytest.mark.parametrize(
    "keys, expected",
    [
        ({"order": "random"}, "model.train_ds.order: wrong type (expected 'global' | 'shards', got 'random')"),
        ({"order": "shards", "shard_window": 0}, "model.train_ds.shard_window: must be at least 1 shard (got 0)"),
    ],
)
def test_a_wrong_order_setting_is_named(keys, expected):
    assert problems_of(shar_path="/data/shar", **keys) == [expected]
