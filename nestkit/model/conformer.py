"""FastConformer encoder with NeMo's `ConformerEncoder` module names (rel_pos attention, dw_striding).

Each layer is macaron style: x + FF/2, + self-attention, + convolution, + FF/2, then LayerNorm.
Padded frames are zeroed before the depthwise convolution and excluded as attention keys, so they
never change valid frames.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nestkit.config import EncoderConfig
from nestkit.model.attention import RelPositionalEncoding, RelPositionMultiHeadAttention, position_biases
from nestkit.model.subsampling import DwStridingSubsampling

FEED_FORWARD_RESIDUAL_SCALE = 0.5  # macaron: each of the two feed-forward halves adds half its output


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float, use_bias: bool):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff, bias=use_bias)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ff, d_model, bias=use_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.silu(self.linear1(x))))


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, norm, Swish, pointwise conv (NeMo's ConformerConvolution).

    `batch_norm` is the norm's name in NeMo's keys whatever its type (BatchNorm1d or LayerNorm).
    """

    def __init__(self, d_model: int, kernel_size: int, context: tuple[int, int], norm_type: str, use_bias: bool):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"encoder.conv_kernel_size: must be odd (got {kernel_size})")
        if context[0] + context[1] + 1 != kernel_size:
            raise ValueError(
                f"encoder.conv_context_size: left + right + 1 must equal the kernel size "
                f"(expected a sum of {kernel_size - 1}, got {list(context)})"
            )
        self.context = context
        self.norm_type = norm_type
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, kernel_size=1, bias=use_bias)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model, bias=use_bias)
        if norm_type == "batch_norm":
            self.batch_norm: nn.Module = nn.BatchNorm1d(d_model)
        elif norm_type == "layer_norm":
            self.batch_norm = nn.LayerNorm(d_model)
        else:
            raise ValueError(
                f"encoder.conv_norm_type: unsupported (expected batch_norm or layer_norm, got {norm_type!r})"
            )
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, kernel_size=1, bias=use_bias)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); pad_mask (B, T) True on padding."""
        # the 1x1 convs run as linear layers on (B, T, D): same weights, no transposes around them
        x = F.linear(x, self.pointwise_conv1.weight.squeeze(-1), self.pointwise_conv1.bias)
        x = F.glu(x, dim=-1).masked_fill(pad_mask[:, :, None], 0.0)
        x = self.depthwise_conv(F.pad(x.transpose(1, 2), self.context))
        if self.norm_type == "layer_norm":
            x = self.batch_norm(x.transpose(1, 2))
        else:
            x = self.batch_norm(x).transpose(1, 2)
        return F.linear(F.silu(x), self.pointwise_conv2.weight.squeeze(-1), self.pointwise_conv2.bias)


class ConformerLayer(nn.Module):
    def __init__(
        self,
        cfg: EncoderConfig,
        context: tuple[int, int],
        pos_biases: Optional[tuple[nn.Parameter, nn.Parameter]] = None,
    ):
        super().__init__()
        d_model, d_ff = cfg.d_model, cfg.d_model * cfg.ff_expansion_factor
        self.norm_feed_forward1 = nn.LayerNorm(d_model)
        self.feed_forward1 = FeedForward(d_model, d_ff, cfg.dropout, cfg.use_bias)
        self.norm_conv = nn.LayerNorm(d_model)
        self.conv = ConvModule(d_model, cfg.conv_kernel_size, context, cfg.conv_norm_type, cfg.use_bias)
        self.norm_self_att = nn.LayerNorm(d_model)
        self.self_attn = RelPositionMultiHeadAttention(cfg.n_heads, d_model, cfg.dropout_att, cfg.use_bias, pos_biases)
        self.norm_feed_forward2 = nn.LayerNorm(d_model)
        self.feed_forward2 = FeedForward(d_model, d_ff, cfg.dropout, cfg.use_bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm_out = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.feed_forward1(self.norm_feed_forward1(x))) * FEED_FORWARD_RESIDUAL_SCALE
        x = x + self.dropout(self.self_attn(self.norm_self_att(x), pos_emb, pad_mask))
        x = x + self.dropout(self.conv(self.norm_conv(x), pad_mask))
        x = x + self.dropout(self.feed_forward2(self.norm_feed_forward2(x))) * FEED_FORWARD_RESIDUAL_SCALE
        return self.norm_out(x)


def layer_drop_probabilities(n_layers: int, drop_prob: float, mode: str, start_layer: int) -> list[float]:
    """Stochastic depth per layer (NeMo's rule): 0 before `start_layer` (1-based), then linear or uniform."""
    if not 0.0 <= drop_prob < 1.0:
        raise ValueError(f"encoder.stochastic_depth_drop_prob: must be in [0, 1) (got {drop_prob})")
    if not 1 <= start_layer <= n_layers:
        raise ValueError(f"encoder.stochastic_depth_start_layer: must be in [1, {n_layers}] (got {start_layer})")
    droppable = n_layers - start_layer
    if mode == "linear":
        tail = [i / droppable * drop_prob for i in range(1, droppable + 1)]
    elif mode == "uniform":
        tail = [drop_prob] * droppable
    else:
        raise ValueError(f"encoder.stochastic_depth_mode: unknown (expected linear or uniform, got {mode!r})")
    return [0.0] * start_layer + tail


class ConformerEncoder(nn.Module):
    """(B, F, T) features -> (B, d_model or feat_out, T') and lengths."""

    def __init__(self, cfg: EncoderConfig, pre_encode: Optional[nn.Module] = None):
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"encoder: d_model must be divisible by n_heads (got {cfg.d_model} and {cfg.n_heads})")
        if cfg.d_model % 2:
            # the positional encodings interleave sin and cos; NeMo fails on a shape mismatch here
            raise ValueError(
                f"encoder.d_model: must be even (sinusoidal position encodings come in sin/cos pairs; got {cfg.d_model})"
            )
        self.d_model = cfg.d_model
        self.pre_encode = build_subsampling(cfg) if pre_encode is None else pre_encode
        xscale = cfg.d_model**0.5 if cfg.xscaling else None
        self.pos_enc = RelPositionalEncoding(
            cfg.d_model, cfg.pos_emb_max_len, xscale, cfg.dropout_pre_encoder, cfg.dropout_emb
        )
        context: tuple[int, int]
        if cfg.conv_context_size is None:
            context = ((cfg.conv_kernel_size - 1) // 2,) * 2
        elif cfg.conv_context_size == "causal":  # a config built by hand, not through config.derive
            context = (cfg.conv_kernel_size - 1, 0)
        else:
            context = (cfg.conv_context_size[0], cfg.conv_context_size[1])
        # tied biases: one (u, v) pair for all layers, listed under every layer's keys as in NeMo
        shared = None if cfg.untie_biases else position_biases(cfg.n_heads, cfg.d_model // cfg.n_heads)
        self.layers = nn.ModuleList(ConformerLayer(cfg, context, shared) for _ in range(cfg.n_layers))
        self.out_proj = nn.Linear(cfg.d_model, cfg.feat_out) if 0 < cfg.feat_out != cfg.d_model else None
        self.layer_drop_probs = layer_drop_probabilities(
            cfg.n_layers, cfg.stochastic_depth_drop_prob, cfg.stochastic_depth_mode, cfg.stochastic_depth_start_layer
        )

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.pre_encode(features.transpose(1, 2), lengths)
        return self.forward_subsampled(x, lengths, generator)

    def forward_subsampled(
        self, x: torch.Tensor, lengths: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T', d_model) output of pre_encode -> (B, D_out, T') encoded, (B,) lengths.

        `generator` draws the stochastic-depth decisions (training with a drop probability only).
        """
        x, pos_emb = self.pos_enc(x)
        pad_mask = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        dropped = self._draw_layer_drops(generator)
        for layer, drop_prob, drop in zip(self.layers, self.layer_drop_probs, dropped):
            residual = x
            x = layer(x, pos_emb, pad_mask)
            if drop_prob > 0.0 and self.training:
                # a dropped layer still joins the graph (x * 0) so every parameter gets a gradient in DDP
                x = x * 0.0 + residual if drop else (x - residual) / (1.0 - drop_prob) + residual
        if self.out_proj is not None:
            x = self.out_proj(x)
        return x.transpose(1, 2), lengths.long()

    def _draw_layer_drops(self, generator: Optional[torch.Generator]) -> list[bool]:
        if not self.training or max(self.layer_drop_probs) == 0.0:
            return [False] * len(self.layers)
        if generator is None:
            raise ValueError(
                "encoder stochastic depth: no generator (expected a torch.Generator in training, got None). "
                "Pass generator= to the forward"
            )
        # One draw per layer that can be dropped, in layer order, none for the others: NeMo draws
        # torch.rand(1) after each layer whose probability is above 0, so a generator seeded like
        # NeMo's global RNG (dropout off) gives NeMo's decisions. rand(n) draws what n rand(1) do.
        droppable = [i for i, p in enumerate(self.layer_drop_probs) if p > 0.0]
        draws = torch.rand(len(droppable), generator=generator, device=generator.device).tolist()
        dropped = [False] * len(self.layers)
        for i, draw in zip(droppable, draws):
            dropped[i] = draw < self.layer_drop_probs[i]
        return dropped


def build_subsampling(cfg: EncoderConfig) -> DwStridingSubsampling:
    chunking = cfg.subsampling_conv_chunking_factor
    if chunking not in (-1, 1) and (chunking < 2 or chunking & (chunking - 1)):
        # NeMo splits the batch into this many chunks to bound memory; the numbers do not change,
        # and utterances are convolved in groups here anyway, so the value only has to be one NeMo accepts
        raise ValueError(
            f"encoder.subsampling_conv_chunking_factor: unsupported (expected -1, 1 or a power of 2, got {chunking})"
        )
    channels = cfg.d_model if cfg.subsampling_conv_channels == -1 else cfg.subsampling_conv_channels
    if cfg.feat_in is None:
        raise ValueError(
            "encoder.feat_in: not set (expected the feature count, got None). Build the config with config_from_dict"
        )
    return DwStridingSubsampling(cfg.feat_in, cfg.d_model, cfg.subsampling_factor, channels, cfg.causal_downsampling)
