"""FastConformer's depthwise-striding subsampling (NeMo's `ConvSubsampling`, `dw_striding`).

(B, T, F) features -> (B, T / factor, d_model): a 3x3 stride-2 conv from 1 to C channels, then per
further factor 2 a depthwise 3x3 stride-2 conv and a pointwise 1x1 conv, ReLUs in between, then a
linear layer over (channels x remaining frequency bins). Module indices inside `conv` follow
NeMo's `nn.Sequential` (ReLUs included), so the state_dict keys are `conv.0`, `conv.2`, `conv.3`, ...

NeMo 2.6.2 zeroes the frames past each utterance's length before every layer, so padding never
leaks into valid frames; here each utterance is convolved at its own length instead, which gives
the same valid frames without computing (or masking) the padding. Frames past the length come out
as zeros before `out`, as in NeMo.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

KERNEL = 3
STRIDE = 2

LengthT = TypeVar("LengthT", int, torch.Tensor)


def _paddings(causal: bool) -> tuple[int, int]:
    # causal: everything on the left (past) and the stride's remainder on the right, as NeMo's CausalConv2D
    return (KERNEL - 1, STRIDE - 1) if causal else ((KERNEL - 1) // 2, (KERNEL - 1) // 2)


def subsampled_length(lengths: LengthT, factor: int, causal: bool = False) -> LengthT:
    """Frames (int or int tensor) after subsampling, NeMo's formula: L -> floor((L + pads - 3) / 2) + 1 per factor 2."""
    left, right = _paddings(causal)
    for _ in range(int(math.log2(factor))):
        lengths = (lengths + left + right - KERNEL) // STRIDE + 1
    return lengths


class DwStridingSubsampling(nn.Module):
    def __init__(self, feat_in: int, d_model: int, factor: int, conv_channels: int, causal: bool = False):
        super().__init__()
        if factor < 2 or factor & (factor - 1):
            raise ValueError(f"encoder.subsampling_factor: must be a power of 2 (got {factor})")
        self.factor = factor
        self.causal = causal
        self.left_pad, self.right_pad = _paddings(causal)
        conv_padding = 0 if causal else self.left_pad  # causal padding is asymmetric: applied by hand
        out_bins = subsampled_length(feat_in, factor, causal)
        self.out = nn.Linear(conv_channels * out_bins, d_model)  # registered first: NeMo's key order
        layers: list[nn.Module] = [nn.Conv2d(1, conv_channels, KERNEL, STRIDE, conv_padding), nn.ReLU()]
        for _ in range(int(math.log2(factor)) - 1):
            layers += [
                nn.Conv2d(conv_channels, conv_channels, KERNEL, STRIDE, conv_padding, groups=conv_channels),
                nn.Conv2d(conv_channels, conv_channels, kernel_size=1),
                nn.ReLU(),
            ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) features and (B,) lengths -> (B, T', d_model) and (B,) lengths."""
        out_lengths = subsampled_length(lengths, self.factor, self.causal)
        out_frames = subsampled_length(x.shape[1], self.factor, self.causal)
        # Utterances run at their own length (those of equal length together), so padding is
        # neither computed nor masked: zeroing the frames past the length before every conv (NeMo)
        # is the same as cutting them off, since each conv's zero padding covers the one frame its
        # window reaches beyond.
        rows_by_length: dict[int, list[int]] = {}
        for row, length in enumerate(lengths.tolist()):
            rows_by_length.setdefault(min(length, x.shape[1]), []).append(row)
        order, groups = [], []
        for length, rows in rows_by_length.items():
            frames = self._convs(x[rows, :length])
            groups.append(F.pad(frames, (0, 0, 0, out_frames - frames.shape[1])))
            order += rows
        stacked = torch.cat(groups)[torch.tensor(order).argsort().to(x.device)]
        return self.out(stacked), out_lengths

    def _convs(self, x: torch.Tensor) -> torch.Tensor:
        """(n, frames, F) utterances without padding -> (n, frames', channels x bins)."""
        if subsampled_length(x.shape[1], self.factor, self.causal) == 0:  # an empty utterance
            return x.new_zeros(x.shape[0], 0, self.out.in_features)
        x = x.unsqueeze(1)  # (n, 1, T, F): time and frequency as the image axes
        for layer in self.conv:
            if self.causal and isinstance(layer, nn.Conv2d) and layer.stride != (1, 1):
                x = F.pad(x, (self.left_pad, self.right_pad, self.left_pad, self.right_pad))
            x = layer(x)
        batch, channels, frames, bins = x.shape
        return x.transpose(1, 2).reshape(batch, frames, channels * bins)
