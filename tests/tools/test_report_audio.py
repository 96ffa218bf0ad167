"""`replay-batch --audio`: the WAVs are the batch's own samples, the picture shows the step's own masks.

No training needed: a batch is rebuilt from the config alone (as `replay-batch` does for any run).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from nestkit.config import load_config
from nestkit.tools.report.batch_view import spans, step_masks
from nestkit.tools.session import DebugSession
from tests.helpers import write_train_config

BATCH = 1


def _nestkit(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nestkit.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def mixed_config(tmp_path_factory, corpus) -> str:
    """Every utterance augmented (noise or another speaker), two segments each, 3 rows a batch."""
    tmp = tmp_path_factory.mktemp("audio")
    return write_train_config(
        tmp / "cfg.yaml",
        corpus["train"],
        corpus["noise"],
        model={
            "train_ds": {
                "batch_size": 3,
                "batch_augmentor": {"prob": 1.0, "min_num_segments": 2, "max_num_segments": 2},
            },
            "masking": {"mask_prob": 0.05, "block_size": 10},
        },
    )


def _rebuilt(config: str):
    cfg = load_config(config).config
    session = DebugSession.open(cfg, 1)
    place = session.place_of_batch(0, BATCH, 0)
    return cfg, session.build(place), place


@pytest.mark.slow
def test_the_wavs_decode_to_the_replayed_tensors_and_the_picture_is_drawn(mixed_config, tmp_path):
    out = tmp_path / "audio"
    result = _nestkit("replay-batch", str(BATCH), mixed_config, "--audio", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "9 WAV files" in result.stdout and "picture:" in result.stdout, result.stdout

    cfg, batch, place = _rebuilt(mixed_config)
    assert {r["augment"]["mode"] for r in batch.records} - {"skip"}, "expected mixed rows"
    prefix = f"e{place.epoch}-b{place.index}-rank0-"
    noise, noisy = batch.noise, batch.noisy_audio
    for row, cut_id in enumerate(batch.cut_ids):
        length = int(batch.audio_len[row])
        decoded = {}
        for kind, tensor in (("clean", batch.audio), ("noise", noise), ("noisy", noisy)):
            path = out / f"{prefix}row{row:02d}-{cut_id}-{kind}.wav"
            samples, rate = sf.read(str(path), dtype="float32")
            assert rate == batch.sample_rate and sf.info(str(path)).subtype == "FLOAT"
            assert np.array_equal(samples, tensor[row, :length].numpy()), (row, kind)
            decoded[kind] = samples
        assert np.array_equal(decoded["clean"] + decoded["noise"], decoded["noisy"])  # what the model got
        mixed = batch.records[row]["augment"]
        if mixed["mode"] != "skip" and mixed.get("scale"):
            outside = np.ones(length, bool)
            for start, n in mixed["segments"]:
                outside[start : start + n] = False
            assert np.abs(decoded["noise"][~outside]).max() > 0 and not decoded["noise"][outside].any()

    from PIL import Image

    picture = Image.open(io.BytesIO((out / f"{prefix}batch.png").read_bytes())).convert("L")
    pixels = np.asarray(picture, dtype=np.float32)
    assert picture.height > 3 * 150 and pixels.std() > 20  # three rows of spectrograms, not a blank canvas


def test_the_picture_masks_are_the_training_steps_own_draw(mixed_config):
    """The early-stopped step draws exactly the masks the full training step draws (same generator,
    same order), and another position draws others."""
    from nestkit.model.nest import NestModel
    from nestkit.training.module import training_loss

    cfg, batch, _ = _rebuilt(mixed_config)
    model = NestModel(cfg.model)
    seen = {}

    def keep(module, args, output):  # returns None: the forward goes on with its own output
        seen["masks"] = output[1]

    handle = model.mask_processor.register_forward_hook(keep)
    model.train()
    training_loss(model, batch, cfg.nestkit.seed)  # the whole step, as training runs it
    handle.remove()
    full = seen["masks"][:, 0, :] > 0
    drawn = step_masks(cfg, batch, NestModel(cfg.model))
    assert torch.equal(drawn, full) and drawn.any()
    for row in range(len(batch)):
        assert all(end > start for start, end in spans(drawn[row].numpy()))

    from dataclasses import replace

    from nestkit.data.batch import BatchPosition

    elsewhere = replace(batch, position=BatchPosition(batch.position.epoch, 0, batch.position.batch + 7))
    assert not torch.equal(step_masks(cfg, elsewhere, NestModel(cfg.model)), drawn)


def test_without_matplotlib_a_one_line_error_names_the_extra(mixed_config, tmp_path):
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('matplotlib is not installed here')\n")
    path = os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", ""), str(Path(__file__).parents[2])])
    result = _nestkit(
        "replay-batch",
        "0",
        "--config",
        mixed_config,
        "--audio",
        str(tmp_path / "a"),
        cwd=tmp_path,
        env={"PYTHONPATH": path},
    )
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'nestkit[report]'" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
