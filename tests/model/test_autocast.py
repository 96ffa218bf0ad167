"""The model under autocast (trainer.precision bf16-mixed / 16-mixed): targets do not follow the precision.

Features, masks and quantizer tokens are the float32 run's, bit for bit; the encoder and decoder run
in 16 bits; log-probs and the loss are float32.
"""

from __future__ import annotations

import pytest
import torch
from model_testing import tiny_config
from test_nest_model import batch

from nestkit.model.nest import NestModel

CASES = {
    "pre_conv, dither, stochastic depth": {
        "preprocessor": {"dither": 1e-5},
        "masking": {"mask_prob": 0.05},
        "encoder": {"n_layers": 3, "stochastic_depth_drop_prob": 0.5},
    },
    "three books": {"num_books": 3, "masking": {"mask_prob": 0.05}},
    "post_conv": {"mask_position": "post_conv", "masking": {"mask_prob": 0.3}},
}
NO_DROPOUT = {"dropout": 0.0, "dropout_att": 0.0, "dropout_pre_encoder": 0.0}


def model_of(case: str) -> NestModel:
    settings = CASES[case]
    torch.manual_seed(0)
    return NestModel(tiny_config(**{**settings, "encoder": {**settings.get("encoder", {}), **NO_DROPOUT}})).train()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_autocast_keeps_targets_and_masks_and_a_float32_loss(case, dtype):
    model = model_of(case)
    reference = model(*batch(), generator=torch.Generator().manual_seed(3))
    expected = model.loss(reference)
    features = model.preprocessor(*batch()[:2], torch.Generator().manual_seed(5))[0]
    with torch.autocast("cpu", dtype=dtype):
        output = model(*batch(), generator=torch.Generator().manual_seed(3))
        result = model.loss(output)
        autocast_features = model.preprocessor(*batch()[:2], torch.Generator().manual_seed(5))[0]
    assert torch.equal(autocast_features, features) and autocast_features.dtype == torch.float32
    assert torch.equal(output.tokens, reference.tokens)
    assert torch.equal(output.masks.float(), reference.masks)
    assert output.log_probs.dtype == result.loss.dtype == torch.float32
    assert int(result.num_masked_frames) == int(expected.num_masked_frames) > 0
    # 16-bit matrix products: close to the float32 loss, not equal to it
    assert result.loss.item() == pytest.approx(expected.loss.item(), rel=2e-2)
    result.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_outside_autocast_nothing_changes():
    """The float32 path runs no extra cast: log-probs are the decoder's own tensor type and the
    quantizer still decides ties in float64 (NeMo parity is checked on this path elsewhere)."""
    model = model_of("three books").eval()
    with torch.no_grad():
        output = model(*batch(), apply_mask=False)
    assert output.log_probs.dtype == torch.float32 and model.quantizer.codebooks.dtype == torch.float64
