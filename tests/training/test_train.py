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


# ------------------------------------------------------------------------------------------------
# Which run a start continues (nestkit.training.run.resolve), and damaged checkpoints


def _cfg(tmp_path: Path, **exp_manager):
    from nestkit.config import config_from_dict

    return config_from_dict({"name": "r", "exp_manager": {"exp_dir": str(tmp_path), **exp_manager}}).config


def _checkpoint(path: Path, step: int) -> Path:
    """A real torch checkpoint with what a resume needs (a state_dict and nestkit's data position)."""
    from nestkit.training.module import DATA_POSITION_KEY

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.randn(64, 64)}, "global_step": step, DATA_POSITION_KEY: {"epoch": 0}}, path)
    return path


def _log(run: Path, name: str = "batches") -> None:
    (run / name).mkdir(parents=True, exist_ok=True)
    (run / name / "rank0.jsonl").write_text('{"step": 0}\n')
    (run / "config.yaml").write_text("name: r\n")


def test_resume_refuses_when_there_is_nothing_to_resume_and_says_what_to_do(tmp_path):
    from nestkit.core.errors import NestkitError
    from nestkit.training.run import resolve

    cfg, run = _cfg(tmp_path), (tmp_path / "r").resolve()
    with pytest.raises(NestkitError, match=r"run .*/r: no such run \(expected .*/r/checkpoints/last.ckpt"):
        resolve(cfg, resume=True)
    assert resolve(cfg, resume=True, fresh=True).resume_from is None  # --resume --fresh: start it
    assert resolve(_cfg(tmp_path, resume_if_exists=True, resume_ignore_no_checkpoint=True)).move_aside == []
    with pytest.raises(NestkitError, match="no such run"):  # NeMo: resume_if_exists alone needs a checkpoint
        resolve(_cfg(tmp_path, resume_if_exists=True))

    _log(run)  # a run that crashed before its first checkpoint
    with pytest.raises(NestkitError) as refused:
        resolve(cfg, resume=True)
    assert str(refused.value) == (
        f"run {run}: nothing to resume (expected {run}/checkpoints/last.ckpt; the earlier run left batches/ but "
        "saved no checkpoint, e.g. it stopped before exp_manager.checkpoint_callback_params.every_n_train_steps). "
        "Drop --resume and pass --fresh to start a new run in this folder (the earlier run's files move to previous/<time>/)"
    )
    with pytest.raises(
        NestkitError, match=r"holds an earlier run's logs \(batches/\) and no checkpoint: a new run would append"
    ):
        resolve(cfg)  # a new run into its logs: refused too
    plan = resolve(cfg, fresh=True)
    assert plan.resume_from is None and plan.move_aside == ["batches", "config.yaml"]
    assert resolve(cfg, rank_zero=False).move_aside == []  # other ranks never judge the folder


def test_a_damaged_last_checkpoint_falls_back_to_the_newest_intact_one_and_says_so(tmp_path):
    from nestkit.core.errors import ConfigError, NestkitError
    from nestkit.training.run import resolve

    cfg, run = _cfg(tmp_path), (tmp_path / "r").resolve()
    ckpts = run / "checkpoints"
    _checkpoint(ckpts / "step4.ckpt", 4)
    _checkpoint(ckpts / "step8.ckpt", 8).write_bytes(b"")  # a save that never wrote
    whole = _checkpoint(ckpts / "last.ckpt", 10).read_bytes()
    (ckpts / "last.ckpt").write_bytes(whole[: len(whole) // 2])  # cut short by a full disk
    with pytest.raises(NestkitError, match="already has checkpoints"):
        resolve(cfg)
    plan = resolve(cfg, resume=True)
    assert plan.resume_from == ckpts / "step4.ckpt"
    assert plan.warnings[0].startswith(
        f"checkpoints/last.ckpt is truncated ({len(whole) // 2:,} bytes; the end of its zip archive is missing: "
    )
    assert plan.warnings[0].endswith("resuming from checkpoints/step4.ckpt (the newest intact one)")
    assert plan.warnings[1] == "passed over step8.ckpt is empty (0 bytes: a save that never wrote, e.g. on a full disk)"
    with pytest.raises(NestkitError) as named:  # a file the user names is never swapped silently
        resolve(cfg, resume=str(ckpts / "last.ckpt"))
    assert str(named.value).startswith(f"checkpoint {ckpts / 'last.ckpt'}: truncated (")
    assert str(named.value).endswith(
        f"the newest intact checkpoint of this run is {ckpts / 'step4.ckpt'} (pass it to --resume-from)"
    )
    (ckpts / "step4.ckpt").write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(
        NestkitError,
        match=r"nothing intact to resume \(checkpoints/last.ckpt is truncated .*; step8.ckpt is empty .*; step4.ckpt is truncated",
    ):
        resolve(cfg, resume=True)
    torch.save({"state_dict": {}}, ckpts / "step4.ckpt")  # not saved by nestkit train
    with pytest.raises(NestkitError, match="step4.ckpt is missing its data position"):
        resolve(cfg, resume=True)
    with pytest.raises(ConfigError, match="--fresh and --resume-from: contradictory"):
        resolve(cfg, resume=str(ckpts / "step4.ckpt"), fresh=True)
    fresh = resolve(cfg, fresh=True)  # start over: everything of the earlier run moves aside
    assert fresh.resume_from is None and fresh.move_aside == ["checkpoints", "config.yaml"]


def test_a_checkpoint_save_on_a_full_disk_keeps_the_previous_file_whole(tmp_path):
    from nestkit.core.errors import NestkitError
    from nestkit.training.checkpoints import AtomicCheckpointIO, check_checkpoint
    from tests.fullfs import small_tmpfs

    with small_tmpfs(tmp_path / "checkpoints", "1m") as fs:
        io = AtomicCheckpointIO()
        state = {"state_dict": {"w": torch.randn(64, 64)}, "nestkit_data_position": {"epoch": 0}}
        io.save_checkpoint(state, fs.path / "last.ckpt")
        before = (fs.path / "last.ckpt").read_bytes()
        fs.fill()
        with pytest.raises(NestkitError) as full:
            io.save_checkpoint({**state, "more": torch.randn(256, 256)}, fs.path / "last.ckpt")
        assert str(full.value).startswith(f"checkpoint {fs.path / 'last.ckpt'}: cannot be written (")
        assert "the previous one is intact" in str(full.value)
        assert (fs.path / "last.ckpt").read_bytes() == before and check_checkpoint(fs.path / "last.ckpt") is None
        assert [p.name for p in fs.path.iterdir() if p.name != ".filler"] == ["last.ckpt"]  # no temporary left


@pytest.mark.slow
def test_resume_from_a_truncated_last_checkpoint_continues_from_the_newest_intact_one_bit_for_bit(
    tmp_path, small_corpus
):
    """2 ranks save step4/step8/last; last.ckpt is then truncated, step8.ckpt emptied and the batch
    log's last line torn (as a full disk and a crash leave them). --resume says so in two lines,
    resumes at step 4, never appends to the torn line, and re-trains steps 4..7 exactly as before."""
    cfg = write_train_config(
        tmp_path / "ddp.yaml",
        small_corpus["train"],
        small_corpus["noise"],
        name="damaged",
        trainer={"devices": 2, "max_steps": 8, "strategy": "ddp"},
        exp_manager={"checkpoint_callback_params": {"every_n_train_steps": 4, "keep_periodic": -1}},
    )
    first = nestkit("train", cfg, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "runs" / "damaged"
    before = {r: losses(run, r) for r in (0, 1)}
    ckpts = run / "checkpoints"
    assert {p.name for p in ckpts.glob("*.ckpt")} >= {"step4.ckpt", "step8.ckpt", "last.ckpt"}
    whole = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(whole[: len(whole) // 3])
    (ckpts / "step8.ckpt").write_bytes(b"")
    log = run / "batches" / "rank0.jsonl"
    log.write_bytes(log.read_bytes() + b'{"step": 8, "epoch": 1, "cut_ids": ["ut')

    named = nestkit("train", cfg, "--resume-from", str(ckpts / "last.ckpt"), cwd=tmp_path)
    assert named.returncode == 1 and "Traceback" not in named.stderr
    assert f"checkpoint {ckpts / 'last.ckpt'}: truncated (" in " ".join(named.stderr.split())

    again = nestkit("train", cfg, "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    said = " ".join(again.stderr.split())
    assert "Traceback" not in again.stderr and "Aborted" not in again.stderr
    assert "checkpoints/last.ckpt is truncated (" in said
    assert "resuming from checkpoints/step4.ckpt (the newest intact one)" in said
    assert "passed over step8.ckpt is empty (0 bytes" in said
    assert f"{log}: removed a torn last line" in said  # repaired before the first new record
    for rank in (0, 1):
        records = read_batch_log(run, rank)  # strict: a record glued to a torn line would not parse
        assert [r["step"] for r in records] == [*range(8), *range(4, 8)]
        resumed = {r["step"]: (r["epoch"], r["batch"], r["fingerprint"], r["loss"]) for r in records[8:]}
        assert resumed == {s: before[rank][s] for s in range(4, 8)}  # same batches, bit-identical losses
    assert log.read_bytes().endswith(b"\n")


def test_with_gradient_accumulation_each_step_is_printed_once(tmp_path, small_corpus):
    cfg = write_train_config(
        tmp_path / "acc.yaml",
        small_corpus["train"],
        small_corpus["noise"],
        name="acc",
        model={"train_ds": {"num_workers": 0}},
        trainer={"max_steps": 3, "accumulate_grad_batches": 2, "log_every_n_steps": 1},
    )
    result = nestkit("train", cfg, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("step ")]
    assert printed == ["1/3", "2/3", "3/3"], result.stdout  # one line per optimizer step, not per micro-batch
