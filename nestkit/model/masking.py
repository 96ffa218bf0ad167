"""Random block masking (NeMo's `RandomBlockMasking`), drawing only from an explicit generator.

The draws per utterance are the ones NeMo makes, in the same order (with overlap: a binomial
count, then a permutation of start frames; without overlap: an offset, then a permutation of
block slots), so a generator seeded like NeMo's global RNG gives NeMo's masks. The mask itself is
built without a Python loop over blocks.

Without overlap NeMo does not clip blocks at the utterance end: a shrunk block (utterance too
short for count + 1 whole blocks) keeps an offset drawn up to the full block_size, and the short
utterance fallback masks 8 frames whatever the length, so masks can cover padding frames (which
NeMo's loss then scores). Those blocks are kept here too, so masks and loss stay NeMo's; blocks
with overlap are clipped at the utterance end, as NeMo clips them. Deliberate difference: where a
block passes the end of the padded tensor NeMo crashes (index error); here it is cut there.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from nestkit.config import MaskingConfig

# NeMo's fallback for utterances too short for one block: mask the first 8 frames.
SHORT_UTTERANCE_BLOCK_FRAMES = 8
MASK_EMBEDDING_INIT_STD = 0.1


class RandomBlockMasking(nn.Module):
    """Replaces random blocks of frames of (B, D, T) features by a mask vector (`mask_embedding`)."""

    def __init__(self, cfg: MaskingConfig, feat_in: int, block_size: int):
        super().__init__()
        if block_size < 1:
            raise ValueError(f"masking.block_size: must be at least 1 frame (got {block_size})")
        self.block_size = block_size
        self.mask_prob = cfg.mask_prob
        self.allow_overlap = cfg.allow_overlap
        self.max_mask_ratio = cfg.max_mask_ratio
        if cfg.mask_value is None:
            embedding = torch.empty(feat_in).normal_(0.0, MASK_EMBEDDING_INIT_STD)
            self.mask_embedding = nn.Parameter(embedding, requires_grad=not cfg.freeze)
        else:
            self.mask_embedding = nn.Parameter(torch.full((feat_in,), float(cfg.mask_value)), requires_grad=False)

    def frame_mask(self, lengths: torch.Tensor, num_frames: int, generator: torch.Generator) -> torch.Tensor:
        """(B, num_frames) bool, True where a frame is masked."""
        starts, ends, rows = [], [], []
        for row, length in enumerate(lengths.tolist()):
            if self.block_size >= length * self.max_mask_ratio:
                row_starts = torch.zeros(1, dtype=torch.long)
                block = SHORT_UTTERANCE_BLOCK_FRAMES
            elif self.allow_overlap:
                row_starts, block = self._overlapping_starts(length, generator), self.block_size
            else:
                row_starts, block = self._disjoint_starts(length, generator)
            row_ends = row_starts + block
            if self.allow_overlap:  # NeMo clamps overlapping blocks at the utterance end, never disjoint ones
                row_ends = row_ends.clamp(max=length)
            starts.append(row_starts)
            ends.append(row_ends)
            rows.append(torch.full_like(row_starts, row))
        return _blocks_to_mask(torch.cat(starts), torch.cat(ends), torch.cat(rows), len(lengths), num_frames)

    def _overlapping_starts(self, length: int, generator: torch.Generator) -> torch.Tensor:
        candidates = max(0, length - self.block_size)
        count = torch.binomial(
            torch.tensor(candidates, dtype=torch.float), torch.tensor(self.mask_prob), generator=generator
        ).long()
        return torch.randperm(candidates, generator=generator)[:count]

    def _disjoint_starts(self, length: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        # float32 tensor arithmetic, as NeMo, so the block count rounds the same way
        count = int(torch.ceil(torch.tensor(length) * self.mask_prob / self.block_size).int())
        offset = int(torch.randint(0, self.block_size, (1,), generator=generator)[0])
        block = self.block_size
        if (count + 1) * block > length:
            block = max(1, length // (count + 1))  # NeMo divides by zero when this reaches 0
        slots = length // block
        chosen = torch.randperm(slots - 1, generator=generator)[:count]
        return chosen * block + offset, block

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor, generator: Optional[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D, T) features -> masked features, and masks (B, D, T) with 1.0 on masked frames.

        The draws are made on the CPU (a CPU `generator`), whatever the features' device.

        The returned masks are an expanded view of one (B, 1, T) row (no D-fold copy).
        """
        if generator is None:
            raise ValueError(
                "masking: no generator (expected a torch.Generator, got None). "
                "Pass generator=nestkit.core.rng.torch_generator(seed, 'model', step)"
            )
        frames = self.frame_mask(lengths.cpu(), feats.shape[-1], generator).to(feats.device)
        return apply_frame_mask(feats, frames, self.mask_embedding)


def apply_frame_mask(
    feats: torch.Tensor, frames: torch.Tensor, embedding: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put `embedding` on the masked frames of (B, D, T) `feats`; also return the (B, D, T) masks."""
    masked = torch.where(frames[:, None, :], embedding.to(feats.dtype)[None, :, None], feats)
    return masked, frames[:, None, :].to(feats.dtype).expand_as(feats)


def _blocks_to_mask(
    starts: torch.Tensor, ends: torch.Tensor, rows: torch.Tensor, batch: int, num_frames: int
) -> torch.Tensor:
    # +1 at each block start and -1 at its end; a running sum > 0 marks covered frames
    starts, ends = starts.clamp(max=num_frames), ends.clamp(max=num_frames)  # cut at the tensor end (NeMo crashes)
    keep = ends > starts
    starts, ends, rows = starts[keep], ends[keep], rows[keep]
    edges = torch.zeros(batch, num_frames + 1, dtype=torch.int32)
    ones = torch.ones_like(starts, dtype=torch.int32)
    edges.index_put_((rows, starts), ones, accumulate=True)
    edges.index_put_((rows, ends), -ones, accumulate=True)
    return edges.cumsum(dim=1)[:, :num_frames] > 0
