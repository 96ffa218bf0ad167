"""Reading NeMo/Lightning/plain checkpoints strictly, and exporting a state_dict NeMo loads."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch
from model_testing import GOLDEN_DIR, tiny_config
from omegaconf import OmegaConf

from nestkit.core.errors import NestkitError
from nestkit.model.checkpoint import CheckpointError, export_nemo_state_dict, load_nemo_weights, read_state_dict
from nestkit.model.nest import NestModel


def trained_like_model(seed: int = 0) -> NestModel:
    torch.manual_seed(seed)
    return NestModel(tiny_config())


def write_nemo(path: Path, state: dict, member: str, mode: str = "w") -> Path:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with tarfile.open(path, mode) as archive:
        for name, data in (
            (member.replace("model_weights.ckpt", "model_config.yaml"), b"model: {}\n"),
            (member, buffer.getvalue()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(
    "member,mode", [("./model_weights.ckpt", "w"), ("model_weights.ckpt", "w"), ("./model_weights.ckpt", "w:gz")]
)
def test_reads_a_nemo_archive(tmp_path, member, mode):
    source = trained_like_model(1)
    path = write_nemo(tmp_path / "model.nemo", source.state_dict(), member, mode)
    target = trained_like_model(2)
    load_nemo_weights(target, path)
    assert same_weights(source, target)


def test_reads_a_lightning_checkpoint_with_the_model_prefix_and_a_plain_state_dict(tmp_path):
    source = trained_like_model(1)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}, "global_step": 7}, ckpt)
    target = trained_like_model(2)
    load_nemo_weights(target, ckpt)
    assert same_weights(source, target)
    plain = tmp_path / "weights.pt"
    torch.save(source.state_dict(), plain)
    other = trained_like_model(3)
    load_nemo_weights(other, plain)
    assert same_weights(source, other)


def test_golden_nemo_state_dict_loads(golden_config):
    model = NestModel(golden_config)
    load_nemo_weights(model, GOLDEN_DIR / "nest_tiny.state_dict.pt")
    expected = torch.load(GOLDEN_DIR / "nest_tiny.state_dict.pt", weights_only=True)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_mismatch_lists_missing_unexpected_and_shapes_and_loads_nothing(tmp_path):
    source = NestModel(tiny_config(num_classes=32)).state_dict()
    source.pop("encoder.layers.1.norm_out.weight")
    source["encoder.layers.9.extra"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(source, path)
    target = trained_like_model(2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_nemo_weights(target, path)
    message = str(info.value)
    assert message.startswith(f"checkpoint {path}: weights do not fit the model: 1 missing, 1 unexpected, ")
    assert "(expected the " in message and "Check that the config" in message
    assert "missing key: encoder.layers.1.norm_out.weight" in message
    assert "unexpected key: encoder.layers.9.extra" in message
    assert "shape mismatch: decoder.decoder_layers.0.weight: expected shape (64, 32, 1), got (32, 32, 1)" in message
    assert isinstance(info.value, NestkitError)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_pickled_objects_need_trust(tmp_path):
    source = trained_like_model(1)
    path = tmp_path / "nemo_lightning.ckpt"
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": OmegaConf.create({"cfg": {"a": 1}})}, path)
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        read_state_dict(path)
    target = trained_like_model(2)
    load_nemo_weights(target, path, trust_pickle=True)
    assert same_weights(source, target)


def test_unreadable_inputs_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_state_dict(tmp_path / "absent.nemo")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        read_state_dict(junk)
    empty_archive = tmp_path / "empty.nemo"
    with tarfile.open(empty_archive, "w"):
        pass
    with pytest.raises(CheckpointError, match="expected 1 member named model_weights.ckpt, got 0"):
        read_state_dict(empty_archive)


def test_export_strips_the_lightning_prefix_and_round_trips(tmp_path):
    source = trained_like_model(1).eval()
    lightning_state = {f"model.{k}": v for k, v in source.state_dict().items()}
    lightning_state["loss_ema"] = torch.zeros(())  # other LightningModule state is left out
    out = export_nemo_state_dict(lightning_state, tmp_path / "nemo" / "weights.pt")
    exported = torch.load(out, weights_only=True)
    assert list(exported) == list(source.state_dict())
    target = trained_like_model(2).eval()
    target.load_state_dict(exported, strict=True)
    audio = torch.randn(1, 8000) * 0.1
    lengths = torch.tensor([8000])
    with torch.no_grad():
        a = source(audio, lengths, audio, lengths, apply_mask=False)
        b = target(audio, lengths, audio, lengths, apply_mask=False)
    assert torch.equal(a.log_probs, b.log_probs)


def test_export_without_the_prefix_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to export"):
        export_nemo_state_dict({"encoder.x": torch.zeros(1)}, tmp_path / "w.pt")
    out = export_nemo_state_dict({"encoder.x": torch.zeros(1)}, tmp_path / "w.pt", prefix="")
    assert list(torch.load(out, weights_only=True)) == ["encoder.x"]
