"""`order: shards` on real shards: lhotse Shar and NeMo tarred corpora written by nestkit's writers, read
through the training pipeline (index, planner, sampler, dataset, DataLoader), looked up by `nestkit lookup`
in a fresh process, and measured against the global shuffle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nestkit.data.locality import locality
from nestkit.data.pipeline import build_pipeline
from nestkit.data.plan import ShardLayout
from nestkit.data.sampler import Planner
from nestkit.data.shards.write import write_nemo_tarred, write_shar
from nestkit.data.synthetic import make_corpus
from tests.helpers import data_config, write_train_config
from tests.tools.test_lookup_replay import run

SHARD_SIZE = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("order")
    paths = make_corpus(folder / "files", num_utterances=80, num_noises=2, min_seconds=1.0, max_seconds=1.6, seed=3)
    write_shar(paths["train"], str(folder / "shar"), shard_size=SHARD_SIZE, progress=False)
    nemo = write_nemo_tarred(paths["train"], str(folder / "nemo"), shard_size=SHARD_SIZE, progress=False)
    return {
        **paths,
        "folder": folder,
        "shar": str(folder / "shar"),
        "nemo": str(folder / "nemo"),
        "tars": len(nemo.tars),
    }


def corpus_keys(data, kind: str) -> dict:
    if kind == "shar":
        return {"shar_path": data["shar"], "manifest_filepath": None}
    return {
        "manifest_filepath": f"{data['nemo']}/tarred_audio_manifest.json",
        "is_tarred": True,
        "tarred_audio_filepaths": f"{data['nemo']}/audio__OP_0..{data['tars'] - 1}_CL_.tar",
    }


def config(data, kind: str, **ds):
    keys = {k: v for k, v in corpus_keys(data, kind).items() if v is not None}
    return data_config([], data["noise"], **keys, **ds)


def layout_of(index) -> ShardLayout:
    return ShardLayout(index.shard, index.member_offset)


@pytest.mark.parametrize("kind", ["shar", "nemo"])
@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_on_real_shards_a_step_reads_few_shards_and_each_rank_reads_forward(data, kind, world):
    measured = {}
    for order in ("global", "shards"):
        pipeline = build_pipeline(config(data, kind, batch_size=3, order=order, shard_window=2), world_size=world)
        assert pipeline.index.kind == ("shar" if kind == "shar" else "nemo_tarred")
        measured[order] = locality(pipeline.sampler.planner.deal(1, world), layout_of(pipeline.index))
    shards, glob = measured["shards"], measured["global"]
    assert shards.shards_per_step * 2 <= glob.shards_per_step, measured
    assert shards.forward_reads >= 0.6 and glob.forward_reads <= 0.25, measured


@pytest.mark.parametrize("kind", ["shar", "nemo"])
@pytest.mark.parametrize("mode", [{"batch_size": 4}, {"batch_size": None, "batch_duration": 6.0, "num_buckets": 3}])
def test_batches_built_by_the_pipeline_use_every_cut_once_and_read_forward(data, kind, mode):
    world = 2
    cfg = config(data, kind, order="shards", shard_window=2, drop_last=True, **mode)
    pipelines = [build_pipeline(cfg, rank=r, world_size=world) for r in range(world)]
    index = pipelines[0].index
    where = {index.cut_id(i): (int(index.shard[i]), int(index.member_offset[i])) for i in range(len(index))}
    steps = {len(p.sampler) for p in pipelines}
    assert len(steps) == 1 and steps.pop() >= 2  # equal steps on every rank
    seen = []
    for p in pipelines:
        p.sampler.set_epoch(1)
        for batch in p.dataloader(num_workers=1):
            assert all(r["path"].split(".tar:")[0] + ".tar" in index.shards for r in batch.records)
            shard_offsets = [where[c] for c in batch.cut_ids]
            for (s0, o0), (s1, o1) in zip(shard_offsets, shard_offsets[1:]):
                assert s1 != s0 or o1 > o0  # the batch's reads go forward in each shard
            seen.extend(batch.cut_ids)
    stats = pipelines[0].sampler.plan(1).stats
    assert len(seen) == len(set(seen)) and len(seen) + stats.dropped == len(index)


def test_lookup_in_a_fresh_process_names_the_batch_the_pipeline_built(data, tmp_path):
    ds = {**corpus_keys(data, "shar"), "order": "shards", "shard_window": 2, "batch_size": 3}
    cfg_path = write_train_config(
        tmp_path / "config.yaml", None, data["noise"], model={"train_ds": ds}, trainer={"devices": 2}
    )
    from nestkit.config import load_config

    cfg = load_config(cfg_path).config
    pipeline = build_pipeline(cfg, rank=1, world_size=2)
    pipeline.sampler.set_epoch(0)
    built = pipeline.batch(3)
    looked = run("lookup", cfg_path, "--batch", "3", "--epoch", "0", "--rank", "1", "--format", "json", cwd=tmp_path)
    assert looked.returncode == 0, looked.stderr[-2000:]
    [found] = json.loads(looked.stdout)["ranks"]
    assert [c["cut_id"] for c in found["cuts"]] == built.cut_ids and found["fingerprint"] == built.fingerprint
    offsets = [c["member_offset"] for c in found["cuts"] if c["shard"] == found["cuts"][0]["shard"]]
    assert offsets == sorted(offsets) and Path(found["cuts"][0]["shard"]).name.startswith("recording.")


def test_cached_sequences_of_the_two_orders_never_mix(data, tmp_path):
    index = build_pipeline(config(data, "shar")).index
    planners = {
        name: Planner(index, build_pipeline(config(data, "shar", **keys)).sampler.batching, seed=5, cache_dir=tmp_path)
        for name, keys in {
            "global": {},
            "shards-2": {"order": "shards", "shard_window": 2},
            "shards-3": {"order": "shards", "shard_window": 3},
        }.items()
    }
    signatures = {name: p.signature() for name, p in planners.items()}
    assert signatures["global"]["format"] == "nestkit-plan/2" and "layout" not in signatures["global"]
    assert signatures["shards-2"]["format"] == "nestkit-plan/2+shards/2" and signatures["shards-2"]["layout"]
    # a resume under another order is refused (it would skip or repeat data), naming both rules
    from nestkit.training.elastic import plan_changes

    assert plan_changes(signatures["global"], signatures["global"]) == []
    problems = plan_changes(signatures["global"], signatures["shards-2"])
    assert problems == [
        "model.train_ds.order: changed since the checkpoint (expected 'global', got 'shards')",
        "model.train_ds.shard_window: changed since the checkpoint (expected 4, got 2)",
        "plan format: the checkpoint's plan rule is 'nestkit-plan/2', this nestkit's is 'nestkit-plan/2+shards/2'",
    ]
    # a checkpoint from before the order existed planned globally: not a change
    older = {k: v for k, v in signatures["global"].items() if k not in ("order", "shard_window")}
    assert plan_changes(older, signatures["global"]) == []
    sequences = {name: p.sequence(0).rows.tolist() for name, p in planners.items()}  # all through one cache folder
    assert len({json.dumps(s) for s in sequences.values()}) == 3
    assert len(list((tmp_path / "plans").iterdir())) == 3
    for name, planner in planners.items():  # read back from the cache: each its own
        fresh = Planner(index, planner.batching, seed=5, cache_dir=tmp_path)
        assert np.asarray(fresh.sequence(0).rows).tolist() == sequences[name]
