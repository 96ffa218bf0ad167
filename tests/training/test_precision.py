"""trainer.precision as NeMo configs set it, and a real bf16-mixed training run on CPU autocast."""

from __future__ import annotations

import math

import pytest

from nestkit.core.errors import ConfigError
from nestkit.runfolder.batch_log import read_batch_log
from nestkit.runfolder.metrics import metrics_files, read_metrics
from nestkit.training.devices import lightning_precision
from tests.helpers import run_nestkit, write_train_config


@pytest.mark.parametrize(
    ("value", "accelerator", "expected"),
    [
        (32, "cpu", "32-true"),
        ("32", "gpu", "32-true"),
        ("32-true", "cpu", "32-true"),
        ("bf16", "cpu", "bf16-mixed"),
        ("bf16-mixed", "cpu", "bf16-mixed"),
        (16, "gpu", "16-mixed"),
        ("16-mixed", "gpu", "16-mixed"),
    ],
)
def test_nemos_precision_values_become_lightnings(value, accelerator, expected):
    assert lightning_precision(value, accelerator) == expected


def test_float16_autocast_on_the_cpu_is_a_config_error_naming_what_works():
    # Lightning would quietly train in bfloat16 instead
    for value in (16, "16-mixed"):
        with pytest.raises(ConfigError, match=r"trainer\.precision: float16 autocast needs a GPU.*bf16-mixed"):
            lightning_precision(value, "cpu")


@pytest.mark.parametrize("value", ["bf16-true", "16-true", 64, "64-true", "fp8"])
def test_precisions_that_would_cast_the_frozen_targets_are_refused(value):
    with pytest.raises(ConfigError, match=r"trainer\.precision: unsupported \(expected 32, bf16-mixed or 16-mixed"):
        lightning_precision(value)


def test_bf16_mixed_reaches_the_model_through_lightning(tmp_path):
    """The config's precision is the Trainer's, whose autocast runs the encoder in bfloat16 while
    the targets stay float32 (the real run below shows the whole loop trains)."""
    import torch

    from nestkit.config import load_config
    from nestkit.training.module import NestLightningModule
    from nestkit.training.trainer import build_trainer

    config = write_train_config(tmp_path / "c.yaml", "unused.json", trainer={"precision": "bf16"})
    cfg = load_config(config).config
    trainer = build_trainer(cfg, tmp_path / "run", interactive=False, val_every=1000)
    assert trainer.precision == "bf16-mixed"
    model = NestLightningModule(cfg, tmp_path / "run").model.train()
    seen = {}
    model.decoder.register_forward_hook(lambda module, inputs, output: seen.update(encoded=inputs[0].dtype))
    t = torch.arange(24000) / 16000
    audio = torch.stack([0.2 * torch.sin(2 * torch.pi * f * t) for f in (150.0, 220.0)])
    audio = audio + 0.01 * torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))
    inputs = (audio, torch.tensor([24000, 20000]), audio, torch.tensor([24000, 20000]))
    reference = model(*inputs, generator=torch.Generator().manual_seed(1))
    with trainer.precision_plugin.forward_context():
        output = model(*inputs, generator=torch.Generator().manual_seed(1))
    assert seen["encoded"] == torch.bfloat16
    assert torch.equal(output.tokens, reference.tokens) and output.log_probs.dtype == torch.float32


@pytest.fixture(scope="module")
def phone_corpus(tmp_path_factory):
    from nestkit.data.synthetic import make_corpus

    folder = tmp_path_factory.mktemp("precision_corpus")
    return make_corpus(
        folder, num_utterances=16, num_noises=2, min_seconds=1.5, max_seconds=2.5, seed=4, voice="phones"
    )


def test_train_refuses_float16_on_the_cpu_before_training(tmp_path, phone_corpus):
    config = write_train_config(tmp_path / "c.yaml", phone_corpus["train"], phone_corpus["noise"], name="fp16")
    result = run_nestkit("train", config, "trainer.precision=16", cwd=tmp_path)
    assert result.returncode != 0
    assert "trainer.precision: float16 autocast needs a GPU" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "fp16" / "checkpoints").exists()


STEPS = 30


@pytest.mark.slow
def test_bf16_mixed_trains_on_cpu_autocast_and_the_data_tools_still_agree(tmp_path, phone_corpus):
    """A real bf16-mixed run: the loss is finite and falls, and `lookup` / `replay-batch` rebuild the
    logged batches with the logged fingerprints (data never depends on the precision)."""
    config = write_train_config(
        tmp_path / "bf16.yaml",
        phone_corpus["train"],
        phone_corpus["noise"],
        phone_corpus["validation"],
        name="bf16",
        model={
            "train_ds": {"batch_size": 4},
            "masking": {"block_size": 16, "mask_prob": 0.05},
            "optim": {"lr": 0.05, "sched": {"warmup_steps": 10}},  # peak 2.8e-3 at step 10
        },
        trainer={"precision": "bf16-mixed", "max_steps": STEPS, "val_check_interval": 15, "log_every_n_steps": 1},
    )
    result = run_nestkit("train", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "bf16"
    records = read_batch_log(run_dir, 0)
    losses = [r["loss"] for r in records]
    assert [r["step"] for r in records] == list(range(STEPS))
    assert all(math.isfinite(loss) for loss in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, f"the loss did not fall: {losses}"
    metrics = read_metrics(metrics_files(run_dir))
    accuracy = [value for _, value in metrics["train_acc"]]
    val_accuracy = [value for _, value in metrics["val_acc"]]
    assert len(accuracy) == STEPS and len(val_accuracy) == 2 and all(0.0 <= a <= 1.0 for a in accuracy + val_accuracy)

    from nestkit.config import load_config
    from nestkit.tools.lookup import lookup_batch
    from nestkit.tools.session import DebugSession

    session = DebugSession.open(load_config(config).config, None, run_dir)
    for record in records[:: STEPS // 5]:
        [found] = lookup_batch(session, [session.layout.place_of_index(record["epoch"], record["index"])])
        assert found.fingerprint == record["fingerprint"] and found.matches_log is True
    replayed = run_nestkit("replay-batch", "--step", str(STEPS - 1), config, cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    assert f"fingerprint {records[-1]['fingerprint']}  matches the training log (step {STEPS - 1})" in replayed.stdout
