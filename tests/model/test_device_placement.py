"""Every tensor of a training step lands on the model's device, checked without a GPU.

The model runs on a stand-in accelerator (device_audit: CPU data that reports another device and
obeys CUDA's device rules), so a tensor made without `device=`, a CPU mask meeting device features
or a CPU generator drawing onto the device fails here as it would on a GPU. What only a GPU shows
(pinned-memory copies overlapping compute, CUDA kernels, bf16/fp16 numerics on the device) is
bench/gpu_check.sh's job.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from device_audit import AUDITED, AuditedDevice, DeviceMismatch, OnDevice, host
from model_testing import tiny_config
from test_nest_model import batch

from nestkit.data.batch import BatchPosition, NestBatch
from nestkit.model.nest import NestModel
from nestkit.training.module import step_generator, training_loss

# short utterances: every op of the model runs through the Python dispatcher here
AUDIO_SAMPLES = (12000, 9000, 6400)

TRAINING_CASES = {
    "dither, masks, stochastic depth": {
        "preprocessor": {"dither": 1e-5},
        "masking": {"mask_prob": 0.05},
        "encoder": {"n_layers": 3, "stochastic_depth_drop_prob": 0.5},
    },
    "disjoint masks, three books": {"num_books": 3, "masking": {"mask_prob": 0.2, "allow_overlap": False}},
    "post_conv masking": {"mask_position": "post_conv", "masking": {"mask_prob": 0.3}},
}


def test_the_audit_catches_what_cuda_would_refuse():
    with AuditedDevice():
        on_device = torch.ones(4, 3).to(AUDITED)
        assert isinstance(on_device, OnDevice) and on_device.device == AUDITED
        with pytest.raises(DeviceMismatch):
            on_device + torch.arange(3)  # made without device=
        with pytest.raises(DeviceMismatch):
            torch.randn(4, 3, generator=torch.Generator(), device=AUDITED)  # a CPU generator
        with pytest.raises(DeviceMismatch):
            torch.where(torch.ones(4, 3, dtype=torch.bool), on_device, 0.0)  # a CPU mask
        # what CUDA accepts: CPU scalars, CPU index tensors, device-side factories, draws on the CPU then moved
        fine = on_device * torch.tensor(2.0) + torch.arange(3, device=on_device.device)
        noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
        fine = fine[torch.tensor([0, 2])] + noise.to(on_device.device)
    assert isinstance(fine, OnDevice) and fine.device == AUDITED
    assert torch.equal(host(fine), (torch.ones(4, 3) * 2 + torch.arange(3))[[0, 2]] + noise)


@pytest.mark.parametrize("case", sorted(TRAINING_CASES))
def test_a_training_step_keeps_every_tensor_on_the_models_device(case):
    torch.manual_seed(0)
    model = NestModel(tiny_config(**TRAINING_CASES[case])).train()
    expected = model.loss(model(*batch(lengths=AUDIO_SAMPLES), generator=torch.Generator().manual_seed(3)))
    torch.manual_seed(0)
    model = NestModel(tiny_config(**TRAINING_CASES[case])).train()
    with AuditedDevice():
        model.to(AUDITED)
        inputs = [t.to(AUDITED) for t in batch(lengths=AUDIO_SAMPLES)]
        output = model(*inputs, generator=torch.Generator().manual_seed(3))  # the step's CPU generator
        result = model.loss(output)
        result.loss.backward()
    for name, tensor in [*output._asdict().items(), *result._asdict().items()]:
        if isinstance(tensor, torch.Tensor):
            assert tensor.device == AUDITED, name
    assert all(p.grad.device == AUDITED for p in model.parameters() if p.grad is not None)
    # the same step as on the CPU: the device changes where tensors live, not what they hold
    assert host(result.loss).item() == pytest.approx(expected.loss.item(), rel=1e-6)
    assert int(host(result.num_masked_frames)) == int(expected.num_masked_frames) > 0


def test_validation_forward_without_masks_stays_on_the_device():
    model = NestModel(tiny_config()).eval()
    with AuditedDevice(), torch.no_grad():
        model.to(AUDITED)
        output = model(*[t.to(AUDITED) for t in batch(lengths=AUDIO_SAMPLES)], apply_mask=False)
    assert output.log_probs.device == output.tokens.device == output.masks.device == AUDITED


def nest_batch(lengths=AUDIO_SAMPLES) -> NestBatch:
    audio, lengths, noisy, _ = batch(lengths=AUDIO_SAMPLES)
    spans = [(0, 100, 5000), (2, 0, 12000)]  # noise on two rows only, as the augmentor leaves it
    values = torch.cat([(noisy - audio)[row, start : start + length] for row, start, length in spans])
    return NestBatch(
        audio=audio,
        audio_len=lengths,
        noise_values=values,
        noise_spans=spans,
        cut_ids=["a", "b", "c"],
        records=[{}, {}, {}],
        failures=[],
        position=BatchPosition(epoch=0, rank=0, batch=5, index=5),
        fingerprint="f",
    )


def test_a_batch_moves_every_tensor_and_builds_its_noisy_audio_on_the_device():
    tensor_fields = {f.name for f in dataclasses.fields(NestBatch) if "Tensor" in str(f.type)}
    assert tensor_fields == set(NestBatch._TENSORS), "every tensor field is moved (and pinned) with the batch"
    cpu = nest_batch(lengths=AUDIO_SAMPLES)
    torch.manual_seed(0)
    model = NestModel(tiny_config(masking={"mask_prob": 0.05}, preprocessor={"dither": 1e-5})).train()
    expected = training_loss(model, cpu, seed=7)
    torch.manual_seed(0)
    model = NestModel(tiny_config(masking={"mask_prob": 0.05}, preprocessor={"dither": 1e-5})).train()
    with AuditedDevice():
        model.to(AUDITED)
        moved = cpu.to(AUDITED)  # what the LightningModule's transfer_batch_to_device does
        assert all(getattr(moved, name).device == AUDITED for name in NestBatch._TENSORS)
        assert moved.noisy_audio.device == moved.noise.device == AUDITED
        assert torch.equal(host(moved.noisy_audio), cpu.noisy_audio)
        result = training_loss(model, moved, seed=7)  # the step's own generator
    assert step_generator(7, 0, 5).device.type == "cpu"  # drawn on the CPU, moved after: any device
    assert host(result.loss).item() == pytest.approx(expected.loss.item(), rel=1e-6)
