"""Transformer-XL relative-position attention as NeMo's FastConformer uses it.

scores = ((q + u) k^T + rel_shift((q + v) p^T)) / sqrt(d_head), where p are sinusoidal embeddings of
the relative positions L-1 .. -(L-1) through `linear_pos`, and u, v are per-layer biases
(`pos_bias_u`, `pos_bias_v`). Padded keys are excluded; padded query rows give zeros before
`linear_out` (so their output is `linear_out`'s bias), exactly as NeMo's -10000 fill, softmax and
zero fill produce.

The position term goes to `scaled_dot_product_attention` as an additive bias, so torch picks its
fused kernel; the content term and the softmax never materialise separately.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# NeMo's INF_VAL: the fill value for excluded scores, and the base of the sinusoid frequencies.
MASKED_SCORE = -10000.0
SINUSOID_BASE = 10000.0


class RelPositionalEncoding(nn.Module):
    """Scales the input by sqrt(d_model) (xscaling) and returns the relative position embeddings.

    The table covers positions max_len-1 .. -(max_len-1) (NeMo's `pe`, grown on demand, not saved
    in the state_dict); computing it at the same size as NeMo keeps it equal to the last bit.
    """

    pe: torch.Tensor  # (1, 2 * max_len - 1, d_model), a buffer

    def __init__(self, d_model: int, max_len: int, xscale: float | None, dropout: float, dropout_emb: float):
        super().__init__()
        self.d_model = d_model
        self.xscale = xscale
        self.dropout = nn.Dropout(dropout)
        self.dropout_emb = nn.Dropout(dropout_emb) if dropout_emb > 0 else None
        self.register_buffer("pe", self._table(max_len, torch.device("cpu")), persistent=False)

    def _table(self, max_len: int, device: torch.device) -> torch.Tensor:
        positions = torch.arange(max_len - 1, -max_len, -1, dtype=torch.float32, device=device).unsqueeze(1)
        freqs = torch.exp(
            torch.arange(0, self.d_model, 2, dtype=torch.float32, device=device)
            * -(math.log(SINUSOID_BASE) / self.d_model)
        )
        table = torch.zeros(positions.shape[0], self.d_model, device=device)
        table[:, 0::2] = torch.sin(positions * freqs)
        table[:, 1::2] = torch.cos(positions * freqs)
        return table.unsqueeze(0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) -> (dropout(x * xscale), (1, 2T-1, D) embeddings of positions T-1 .. -(T-1))."""
        length = x.shape[1]
        if self.pe.shape[1] < 2 * length - 1:
            self.pe = self._table(length, x.device).to(self.pe.dtype)
        if self.xscale is not None:
            x = x * self.xscale
        centre = self.pe.shape[1] // 2  # index of relative position 0
        pos_emb = self.pe[:, centre - length + 1 : centre + length].to(x.dtype)
        if self.dropout_emb is not None:
            pos_emb = self.dropout_emb(pos_emb)
        return self.dropout(x), pos_emb


def position_biases(n_heads: int, d_head: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Transformer-XL's content (u) and position (v) biases, zero at start as in NeMo."""
    return nn.Parameter(torch.zeros(n_heads, d_head)), nn.Parameter(torch.zeros(n_heads, d_head))


class RelPositionMultiHeadAttention(nn.Module):
    def __init__(
        self,
        n_heads: int,
        d_model: int,
        dropout: float,
        use_bias: bool,
        pos_biases: Optional[tuple[nn.Parameter, nn.Parameter]] = None,
    ):
        """`pos_biases`: (u, v) shared with other layers; by default this layer's own."""
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.dropout = dropout
        self.linear_q = nn.Linear(d_model, d_model, bias=use_bias)
        self.linear_k = nn.Linear(d_model, d_model, bias=use_bias)
        self.linear_v = nn.Linear(d_model, d_model, bias=use_bias)
        self.linear_out = nn.Linear(d_model, d_model, bias=use_bias)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u, self.pos_bias_v = pos_biases or position_biases(n_heads, self.d_head)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_head)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), pos_emb (1, 2T-1, D), pad_mask (B, T) True on padding -> (B, T, D)."""
        with _no_float16_autocast(x.device.type):
            return self._attend(x, pos_emb, pad_mask)

    def _attend(self, x: torch.Tensor, pos_emb: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = x.shape
        q = self._heads(self.linear_q(x))
        k = self._heads(self.linear_k(x)).transpose(1, 2)
        v = self._heads(self.linear_v(x)).transpose(1, 2)
        p = self._heads(self.linear_pos(pos_emb)).transpose(1, 2)  # (1, H, 2T-1, d_head)
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        scale = 1.0 / math.sqrt(self.d_head)
        position_scores = rel_shift(torch.matmul(q_v, p.transpose(-2, -1)))[..., :length] * scale
        position_scores = position_scores.masked_fill(pad_mask[:, None, None, :], MASKED_SCORE)
        out = F.scaled_dot_product_attention(
            q_u, k, v, attn_mask=position_scores, dropout_p=self.dropout if self.training else 0.0, scale=scale
        )
        out = out.transpose(1, 2).reshape(batch, length, d_model).masked_fill(pad_mask[:, :, None], 0.0)
        return self.linear_out(out)


def _no_float16_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Under float16 autocast, attention runs in bfloat16 (float32 where bfloat16 is missing), as in
    NeMo: scores and the -10000 fill are too close to float16's range."""
    if not torch.amp.is_autocast_available(device_type):  # e.g. "meta": no autocast to adjust
        return contextlib.nullcontext()
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16:
        bf16 = device_type != "cuda" or torch.cuda.is_bf16_supported()
        return torch.autocast(device_type, dtype=torch.bfloat16 if bf16 else torch.float32)
    return contextlib.nullcontext()


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """(B, H, T, 2T-1) scores against positions T-1..-(T-1) -> column j holds position i - j for row i."""
    batch, heads, length, positions = scores.shape
    shifted = F.pad(scores, (1, 0)).view(batch, heads, positions + 1, length)
    return shifted[:, :, 1:].view(batch, heads, length, positions)
