"""NeMo's `MultiSoftmaxDecoder`: a 1x1 conv to num_classes x num_decoders logits, log-softmax per decoder."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from nestkit.config import DecoderConfig
from nestkit.model.derived import filled


class MultiSoftmaxDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.num_classes = filled(cfg.num_classes, "decoder.num_classes")
        self.num_decoders = filled(cfg.num_decoders, "decoder.num_decoders")
        self.squeeze_single = cfg.squeeze_single
        feat_in = filled(cfg.feat_in, "decoder.feat_in")
        conv = nn.Conv1d(feat_in, self.num_classes * self.num_decoders, kernel_size=1, bias=cfg.use_bias)
        _init_weight(conv.weight, cfg.init_mode)
        self.decoder_layers = nn.Sequential(conv)  # NeMo's key layout: decoder_layers.0.weight

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        """(B, D, T) -> log-probs (B, T, C, H), or (B, T, C) when squeeze_single and H == 1."""
        conv = cast(nn.Conv1d, self.decoder_layers[0])  # the one layer __init__ put there
        # the 1x1 conv as a linear layer on the (B, T, D) view: no transposed copy of the input
        logits = F.linear(encoded.transpose(1, 2), conv.weight.squeeze(-1), conv.bias)
        logits = logits.view(logits.shape[0], logits.shape[1], self.num_classes, self.num_decoders)
        if self.squeeze_single and self.num_decoders == 1:
            logits = logits.squeeze(-1)
        # float32 under autocast too (a no-op otherwise): the loss sums many log-probs
        return F.log_softmax(logits.float(), dim=2)


def _init_weight(weight: torch.Tensor, mode: str | None) -> None:
    initialisers = {
        "xavier_uniform": nn.init.xavier_uniform_,
        "xavier_normal": nn.init.xavier_normal_,
        "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
        "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    }
    if mode is None:
        return
    if mode not in initialisers:
        raise ValueError(
            f"decoder.init_mode: unknown (expected one of {', '.join(initialisers)} or null, got {mode!r})"
        )
    initialisers[mode](weight)
