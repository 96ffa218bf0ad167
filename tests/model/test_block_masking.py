"""Random block masking: NeMo's draws from an explicit generator, its statistics and block structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nestkit.config import MaskingConfig
from nestkit.model.masking import RandomBlockMasking, apply_frame_mask


def masking(feat_in: int = 4, block_size: int = 40, **changes: object) -> RandomBlockMasking:
    cfg = MaskingConfig(block_size=block_size, feat_in=feat_in)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return RandomBlockMasking(cfg, feat_in, block_size)


def runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of True."""
    padded = np.concatenate([[0], row.numpy().astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e - s)) for s, e in zip(edges[::2], edges[1::2])]


def expected_overlap_coverage(length: int, block: int, p: float) -> float:
    """Mean masked fraction when each of the L - block start frames is chosen with probability p."""
    starts = length - block
    covered = [min(t, starts - 1) - max(0, t - block + 1) + 1 for t in range(length)]
    return float(np.mean([1 - (1 - p) ** max(n, 0) for n in covered]))


def test_overlapping_blocks_statistics_and_structure():
    m = masking(mask_prob=0.01, allow_overlap=True)
    generator = torch.Generator().manual_seed(0)
    lengths = torch.full((64,), 1000)
    fractions = []
    for _ in range(8):
        frames = m.frame_mask(lengths, 1100, generator)
        assert not frames[:, 1000:].any()  # never past the length
        for row in frames:
            assert all(length >= 40 for _, length in runs(row))  # unions of whole 40-frame blocks
        fractions.append(frames[:, :1000].float().mean().item())
    expected = expected_overlap_coverage(1000, 40, 0.01)
    assert abs(np.mean(fractions) - expected) < 0.02, (np.mean(fractions), expected)


def test_disjoint_blocks_count_size_and_fraction():
    m = masking(mask_prob=0.1, allow_overlap=False, block_size=20)
    generator = torch.Generator().manual_seed(3)
    for length in (200, 457, 1000):
        frames = m.frame_mask(torch.tensor([length] * 16), length, generator)
        blocks = int(np.ceil(length * 0.1 / 20))
        for row in frames:
            assert int(row.sum()) == blocks * 20  # disjoint whole blocks
            assert all(size % 20 == 0 for _, size in runs(row))
            assert all(start % 20 == row.nonzero()[0].item() % 20 for start, _ in runs(row))  # one shared offset


def test_disjoint_blocks_shrink_when_the_utterance_is_short_for_them_and_may_pass_its_end():
    m = masking(mask_prob=0.5, allow_overlap=False, block_size=20)
    starts = set()
    for seed in range(20):
        # 30 frames: one block wanted, but 2 x 20 > 30, so the block shrinks to 30 // 2 = 15 frames;
        # its offset is still drawn below 20, so (as in NeMo) it can cover padding past frame 30
        frames = m.frame_mask(torch.tensor([30]), 40, torch.Generator().manual_seed(seed))
        ((start, size),) = runs(frames[0])
        assert start < 20 and size == 15
        starts.add(start)
    assert max(starts) > 15  # some blocks did pass the utterance end
    # cut at the end of the tensor, where NeMo fails with an index error
    frames = m.frame_mask(torch.tensor([30] * 20), 32, torch.Generator().manual_seed(0))
    assert all(sum(size for _, size in runs(row)) == min(15, 32 - runs(row)[0][0]) for row in frames)


@pytest.mark.parametrize("allow_overlap", [True, False])
def test_short_utterances_mask_their_first_8_frames(allow_overlap):
    m = masking(allow_overlap=allow_overlap, block_size=40, max_mask_ratio=0.8, mask_prob=0.0)
    frames = m.frame_mask(torch.tensor([50, 5, 51]), 64, torch.Generator().manual_seed(0))
    assert runs(frames[0]) == [(0, 8)]  # 40 >= 50 x 0.8: too short for one block
    # a 5-frame utterance: NeMo clips the block at its end with overlap, not without
    assert runs(frames[1]) == [(0, 5 if allow_overlap else 8)]
    assert runs(frames[2]) == []  # 40 < 51 x 0.8: the normal path, with probability 0


def test_max_mask_ratio_sets_the_short_utterance_threshold():
    m = masking(max_mask_ratio=0.5, mask_prob=0.0)
    frames = m.frame_mask(torch.tensor([80, 81]), 90, torch.Generator())
    assert runs(frames[0]) == [(0, 8)] and runs(frames[1]) == []  # 40 >= 80 x 0.5, 40 < 81 x 0.5


def test_same_generator_state_same_masks_and_the_global_rng_is_untouched():
    m = masking(mask_prob=0.05)
    lengths = torch.tensor([300, 200, 100])
    global_state = torch.random.get_rng_state()
    a = m.frame_mask(lengths, 320, torch.Generator().manual_seed(9))
    b = m.frame_mask(lengths, 320, torch.Generator().manual_seed(9))
    c = m.frame_mask(lengths, 320, torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.random.get_rng_state(), global_state)


def test_forward_replaces_masked_frames_by_the_embedding_and_returns_nemo_masks():
    m = masking(feat_in=3, block_size=4, mask_prob=0.2)
    feats = torch.randn(2, 3, 30)
    masked, masks = m(feats, torch.tensor([30, 20]), torch.Generator().manual_seed(0))
    frames = masks[:, 0, :].bool()
    assert masks.shape == feats.shape and torch.equal(masks, masks[:, :1].expand_as(masks))
    assert torch.equal(masked[:, :, ~frames[0]][0], feats[0][:, ~frames[0]])
    assert torch.equal(masked[0][:, frames[0]], m.mask_embedding[:, None].expand(3, int(frames[0].sum())))
    with pytest.raises(ValueError, match="generator"):
        m(feats, torch.tensor([30, 20]), None)


def test_mask_embedding_random_frozen_or_constant():
    random_frozen = masking(feat_in=80)
    assert not random_frozen.mask_embedding.requires_grad
    assert 0.05 < random_frozen.mask_embedding.std().item() < 0.2  # NeMo: N(0, 0.1)
    assert masking(freeze=False).mask_embedding.requires_grad
    constant = masking(feat_in=5, mask_value=-2.0, freeze=False)
    assert torch.equal(constant.mask_embedding, torch.full((5,), -2.0)) and not constant.mask_embedding.requires_grad


def test_apply_frame_mask_keeps_gradients_to_the_features():
    feats = torch.randn(1, 2, 5, requires_grad=True)
    frames = torch.tensor([[True, False, False, True, False]])
    masked, _ = apply_frame_mask(feats, frames, torch.zeros(2))
    masked.sum().backward()
    assert feats.grad[0, 0].tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]
