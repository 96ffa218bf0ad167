"""Masked-token loss (NeMo's `MultiMLMLoss`): cross-entropy on masked frames only, averaged over books.

A loss frame is an encoder frame whose group of `combine_time_steps` mask frames is masked on
average more than `mask_threshold` (mask frames are averaged over features too, as NeMo does).

Where nestkit differs, on purpose:
- no masked frame gives a loss of exactly 0 that still depends on the log-probs (so backward and
  DDP work), never NeMo's NaN; `num_masked_frames` says how many frames counted;
- a frame count that is not a multiple of `combine_time_steps` is right-padded with unmasked
  frames (NeMo fails to reshape); log-probs, tokens and mask groups are then cut to the shortest
  of the three, so a frame without a target is never scored (NeMo pads targets with class 0).

`num_correct` counts the loss frames (per book) whose most likely class is the target: the
masked-token accuracy, computed from the same selected frames without touching the loss value.

As in NeMo, `decoder_lengths` does not limit the frames: a masked group counts wherever it is.
NeMo's disjoint block masking can reach past an utterance's end, and NeMo then scores those
padding frames too; so does this loss (the masking module reproduces those masks).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F


class LossResult(NamedTuple):
    loss: torch.Tensor  # () float
    num_masked_frames: torch.Tensor  # () int64: frames that entered the loss (per book)
    num_correct: torch.Tensor  # () int64: (loss frame, book) pairs whose argmax is the target
    num_books: int = 1
    # per utterance, detached (anomaly attribution, the batch log): each row's own masked-token
    # loss (0 where it has no loss frame) and its loss frames; sum(row_loss * row_frames) /
    # sum(row_frames) is `loss` up to float rounding
    row_loss: Optional[torch.Tensor] = None  # (B,) float
    row_frames: Optional[torch.Tensor] = None  # (B,) int64

    @property
    def num_targets(self) -> torch.Tensor:
        """() int64: (loss frame, book) pairs scored: the accuracy's denominator."""
        return self.num_masked_frames * self.num_books

    @property
    def accuracy(self) -> torch.Tensor:
        """() float32: top-1 accuracy over the loss frames, averaged over books (0 with no loss frame)."""
        return self.num_correct.float() / self.num_targets.clamp(min=1).float()


def loss_frame_mask(masks: torch.Tensor, combine_time_steps: int, mask_threshold: float) -> torch.Tensor:
    """(B, D, T) masks -> (B, ceil(T / combine_time_steps)) bool: the frames the loss uses."""
    batch, features, frames = masks.shape
    if frames % combine_time_steps:
        masks = F.pad(masks, (0, combine_time_steps - frames % combine_time_steps))
    groups = masks.transpose(1, 2).reshape(batch, -1, combine_time_steps * features)
    return groups.mean(dim=-1) > mask_threshold


def masked_token_loss(
    masks: torch.Tensor,
    log_probs: torch.Tensor,
    tokens: torch.Tensor,
    decoder_lengths: Optional[torch.Tensor],
    combine_time_steps: int,
    mask_threshold: float,
) -> LossResult:
    """masks (B, D, T); log_probs (B, T', C, H) or (B, T', C); tokens (B, T', H) or (B, T').

    `decoder_lengths` is accepted for NeMo's signature and, as there, not used.
    """
    if log_probs.dim() == 3:
        log_probs = log_probs.unsqueeze(-1)
    if tokens.dim() == 2:
        tokens = tokens.unsqueeze(-1)
    selected = loss_frame_mask(masks, combine_time_steps, mask_threshold)
    frames = min(selected.shape[1], log_probs.shape[1], tokens.shape[1])
    selected, log_probs, tokens = selected[:, :frames], log_probs[:, :frames], tokens[:, :frames]
    target_log_probs = log_probs.gather(2, tokens.unsqueeze(2)).squeeze(2)  # (B, T', H)
    count = selected.sum()
    scored = torch.where(selected[:, :, None], target_log_probs, 0.0)
    total = scored.sum()  # one reduction over everything, as before: the loss keeps its bits
    loss = -total / (count.clamp(min=1) * tokens.shape[-1])
    with torch.no_grad():
        hits = log_probs.argmax(dim=2) == tokens  # (B, T', H)
        correct = (hits & selected[:, :, None]).sum()
        row_frames = selected.sum(dim=1)
        row_loss = -scored.sum(dim=(1, 2)) / (row_frames.clamp(min=1) * tokens.shape[-1])
    return LossResult(loss, count, correct, tokens.shape[-1], row_loss, row_frames)
