"""`nestkit train` end to end: real subprocesses, real checkpoints, real 2-process DDP (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nestkit.runfolder.batch_log import read_batch_log
from tests.helpers import write_train_config

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"


def nestkit(*args: str, cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "nestkit.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    return result


def losses(run_dir: Path, rank: int = 0) -> dict[int, tuple]:
    """Last record per step: (epoch, batch, fingerprint, loss)."""
    return {r["step"]: (r["epoch"], r["batch"], r["fingerprint"], r["loss"]) for r in read_batch_log(run_dir, rank)}


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    from nestkit.data.synthetic import make_corpus

    folder = tmp_path_factory.mktemp("train_corpus")
    return make_corpus(folder, num_utterances=16, num_noises=3, min_seconds=1.2, max_seconds=2.0, seed=11)


@pytest.mark.slow
def test_nemos_own_config_trains_with_only_the_manifest_paths_filled_in(tmp_path, small_corpus):
    """NeMo's nest_fast-conformer.yaml as shipped (Large model, 8 workers, `${...}` references,
    `_target_` classes): the manifest paths, a step budget and a run folder are all a user sets."""
    nemo_yaml = Path(__file__).parents[1] / "fixtures" / "nemo_nest_fast_conformer.yaml"
    manifests = [
        f"model.{split}.{key}={small_corpus[name]}"
        for split, key, name in (
            ("train_ds", "manifest_filepath", "train"),
            ("train_ds", "noise_manifest", "noise"),
            ("validation_ds", "manifest_filepath", "validation"),
            ("validation_ds", "noise_manifest", "noise"),
        )
    ]
    result = nestkit(
        "train", str(nemo_yaml), *manifests, "trainer.max_steps=1", f"exp_manager.exp_dir={tmp_path}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run = tmp_path / "SSL-NEST-FastConformer"
    (record,) = read_batch_log(run, 0)
    assert record["step"] == 0 and len(record["cut_ids"]) == 8 and np.isfinite(record["loss"])
    weights = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    d_model = weights["model.encoder.layers.16.norm_out.weight"].shape[0]  # the Large size: 17 layers of 512
    assert d_model == 512 and not any(k.startswith("model.encoder.layers.17.") for k in weights)
    assert weights["model.decoder.decoder_layers.0.weight"].shape == (8192, 512, 1)  # num_classes 8192, one book


@pytest.mark.slow
@pytest.mark.parametrize("stop", [4, 7])  # 7 batches per epoch: mid-epoch, and exactly at its end
def test_resume_continues_the_exact_loss_curve(tmp_path, small_corpus, stop):
    def config(name):
        return write_train_config(
            tmp_path / f"{name}.yaml",
            small_corpus["train"],
            small_corpus["noise"],
            name=name,
            model={"train_ds": {"num_workers": 1}},
            trainer={"max_steps": 10},
        )

    full = nestkit("train", config("full"), cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    first = nestkit("train", config("parts"), "trainer.max_steps=" + str(stop), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = nestkit("train", config("parts"), cwd=tmp_path)
    assert again.returncode != 0 and "--resume" in again.stderr  # no silent overwrite of a run
    rest = nestkit("train", config("parts"), "--resume", cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr[-3000:]

    runs = tmp_path / "runs"
    expected, resumed = losses(runs / "full"), losses(runs / "parts")
    assert sorted(expected) == sorted(resumed) == list(range(10))
    assert resumed == expected  # same batches (fingerprints) and bit-identical losses
    assert expected[7][:2] == (1, 0), "step 7 opens the second epoch"
    assert len(list((runs / "parts" / "csv").glob("version_*/metrics.csv"))) == 2


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path, small_corpus):
    cfg = write_train_config(
        tmp_path / "ddp.yaml",
        small_corpus["train"],
        small_corpus["noise"],
        name="ddp",
        trainer={"devices": 2, "max_steps": 5, "strategy": "ddp"},
        model={"train_ds": {"num_workers": 1}},
    )
    result = nestkit("train", cfg, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    rank0, rank1 = read_batch_log(run, 0), read_batch_log(run, 1)
    assert [r["step"] for r in rank0] == [r["step"] for r in rank1] == list(range(5))
    for a, b in zip(rank0, rank1):
        assert (a["epoch"], a["batch"]) == (b["epoch"], b["batch"])
        # one step, two consecutive micro-batches of the epoch's sequence: rank 0 takes 2k, rank 1 2k + 1
        assert (a["index"], b["index"]) == (2 * a["batch"], 2 * a["batch"] + 1)
        assert not set(a["cut_ids"]) & set(b["cut_ids"]), "ranks must see different cuts"
    # DDP kept the replicas identical: one checkpoint, and both ranks' losses came from it
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_train_rejects_a_misspelt_key_before_starting(tmp_path, small_corpus):
    cfg = write_train_config(tmp_path / "bad.yaml", small_corpus["train"])
    result = nestkit("train", cfg, "model.encoder.d_modle=64", "trainer.max_stepz=3", cwd=tmp_path)
    assert result.returncode == 2
    assert "model.encoder.d_modle: unknown key. did you mean 'd_model'?" in result.stderr
    assert "trainer.max_stepz: unknown key. did you mean 'max_steps'?" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_nemo_checkpoint_initialises_training_and_export_round_trips(tmp_path, small_corpus):
    golden_sd = torch.load(GOLDEN / "nest_tiny.state_dict.pt", map_location="cpu", weights_only=True)
    tiny_golden = {
        "num_classes": 256,
        "encoder": {"n_layers": 2, "d_model": 64, "n_heads": 4, "subsampling_conv_channels": 64, "conv_kernel_size": 9},
        "optim": {"lr": 1e-9, "sched": {"min_lr": 0.0, "warmup_steps": 10}},
    }
    cfg = write_train_config(
        tmp_path / "init.yaml",
        small_corpus["train"],
        name="init",
        model=tiny_golden,
        trainer={"max_steps": 1},
        init_from=str(GOLDEN / "nest_tiny.state_dict.pt"),
    )
    result = nestkit("train", cfg, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "exported.pt"
    export = nestkit(
        "export-nemo", str(tmp_path / "runs" / "init" / "checkpoints" / "last.ckpt"), "-o", str(out), cwd=tmp_path
    )
    assert export.returncode == 0, export.stderr[-3000:]
    exported = torch.load(out, map_location="cpu", weights_only=True)
    assert list(exported) == list(golden_sd)  # NeMo's keys, in NeMo's order
    for key, value in golden_sd.items():
        assert exported[key].shape == value.shape and exported[key].dtype == value.dtype
        if value.is_floating_point() and "batch_norm.running" not in key:
            # one step at lr 1e-9: the weights are still NeMo's
            np.testing.assert_allclose(exported[key].numpy(), value.numpy(), atol=1e-6, err_msg=key)
