"""Where the NEST model must not follow autocast.

Under `trainer.precision: bf16-mixed` / `16-mixed` Lightning runs the forward inside
`torch.autocast`, which would run the mel filterbank and the quantizer's projection in 16 bits:
the features and therefore the *targets* would change with the precision setting (the same clean
audio would get other tokens). The preprocessor and the quantizer are frozen and cheap, so they run
in float32 (codebooks in float64) whatever the precision; the encoder and decoder follow autocast,
and the decoder's log-softmax and the loss are float32 (NeMo's CUDA autocast does the same for
log_softmax). Outside autocast every context here is a no-op, so float32 numerics are unchanged.
"""

from __future__ import annotations

import contextlib

import torch


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off on `device` for the block (nothing changes when it is not on)."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
