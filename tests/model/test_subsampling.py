"""dw_striding subsampling: per-length convolution equals NeMo's masked batched convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nestkit.model.subsampling import STRIDE, DwStridingSubsampling, subsampled_length


def nemo_masked_reference(sub: DwStridingSubsampling, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """NeMo 2.6.2's MaskedConvSequential: zero frames past the length before every layer, and at the end."""
    x = x.unsqueeze(1)

    def zero_beyond(x, lengths):
        return x * (torch.arange(x.shape[2])[None, :] < lengths[:, None])[:, None, :, None]

    for layer in sub.conv:
        x = zero_beyond(x, lengths)
        if isinstance(layer, torch.nn.Conv2d) and layer.stride != (1, 1):
            if sub.causal:
                x = F.pad(x, (sub.left_pad, sub.right_pad, sub.left_pad, sub.right_pad))
            x = layer(x)
            lengths = subsampled_length(lengths, STRIDE, sub.causal)
        else:
            x = layer(x)
    x = zero_beyond(x, lengths)
    b, c, t, f = x.shape
    return sub.out(x.transpose(1, 2).reshape(b, t, c * f))


@pytest.mark.parametrize("factor,causal", [(2, False), (4, True), (8, False), (16, False)])
def test_equals_nemos_masked_batch(factor, causal):
    torch.manual_seed(0)
    sub = DwStridingSubsampling(feat_in=20, d_model=12, factor=factor, conv_channels=6, causal=causal)
    x = torch.randn(5, 67, 20)
    lengths = torch.tensor([67, 40, 40, 1, 0])  # full, two equal, one frame, empty
    out, out_lengths = sub(x, lengths)
    expected = nemo_masked_reference(sub, x, lengths)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(out_lengths, subsampled_length(lengths, factor, causal))


def test_lengths_follow_nemos_formula():
    assert subsampled_length(400, 8) == 50 and subsampled_length(393, 8) == 50 and subsampled_length(214, 8) == 27
    assert subsampled_length(torch.tensor([0, 1, 2, 3]), 2).tolist() == [0, 1, 1, 2]
    assert subsampled_length(144, 2, causal=True) == 73  # causal: floor(L / 2) + 1
    with pytest.raises(ValueError, match="power of 2"):
        DwStridingSubsampling(80, 16, 6, 8)


def test_gradients_reach_every_conv():
    sub = DwStridingSubsampling(feat_in=16, d_model=8, factor=8, conv_channels=4)
    out, _ = sub(torch.randn(3, 40, 16), torch.tensor([40, 25, 9]))
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sub.parameters())
