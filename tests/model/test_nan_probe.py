"""NanProbe names the first module where NaN/Inf appears, forward and backward."""

from __future__ import annotations

import torch
from model_testing import tiny_config

from nestkit.model.nan_probe import NanProbe, nonfinite_parameters
from nestkit.model.nest import NestModel


def inputs() -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    audio = torch.randn(2, 8000) * 0.1
    lengths = torch.tensor([8000, 6000])
    return audio, lengths, audio.clone(), lengths.clone()


def test_a_poisoned_weight_is_found_at_its_module_and_the_report_says_so():
    model = NestModel(tiny_config()).eval()
    with torch.no_grad():
        model.encoder.layers[1].feed_forward1.linear2.weight[0, 0] = float("nan")
    with NanProbe(model) as probe, torch.no_grad():
        model(*inputs(), apply_mask=False)
    assert probe.forward_origin.module == "encoder.layers.1.feed_forward1.linear2"
    assert probe.forward_origin.inputs_finite
    report = probe.report()
    assert "first non-finite output in module encoder.layers.1.feed_forward1.linear2 (its inputs were finite)" in report
    assert "encoder.layers.1.feed_forward1.linear2.weight" in report
    assert nonfinite_parameters(model) == ["encoder.layers.1.feed_forward1.linear2.weight"]


def test_non_finite_input_is_reported_as_coming_from_the_batch():
    model = NestModel(tiny_config()).eval()
    audio, lengths, noisy, noisy_len = inputs()
    noisy[0, 100] = float("inf")
    with NanProbe(model) as probe, torch.no_grad():
        model(audio, lengths, noisy, noisy_len, apply_mask=False)
    assert probe.forward_origin is not None and probe.forward_origin.module.startswith("preprocessor")


def test_backward_origin_is_the_output_whose_gradient_first_turns_non_finite():
    class Sqrt(torch.nn.Module):
        def forward(self, x):
            return torch.sqrt(x)

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), Sqrt(), torch.nn.Linear(3, 1))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()  # relu output 0: sqrt has an infinite derivative there
    with NanProbe(model) as probe:
        model(torch.ones(2, 3)).sum().backward()
    assert probe.forward_origin is None
    assert probe.backward_origin.module == "1"  # the gradient reaching the ReLU's output is inf first
    assert "first non-finite gradient at the output of module 1" in probe.report()


def test_hooks_are_removed_on_exit_and_clean_runs_report_nothing():
    model = NestModel(tiny_config()).eval()
    with NanProbe(model) as probe, torch.no_grad():
        model(*inputs(), apply_mask=False)
    assert probe.forward_origin is None and probe.backward_origin is None
    assert all(not m._forward_hooks for m in model.modules())
    assert probe.report().startswith("forward: every module output finite")
