"""Random-projection quantizer: tokens identical to NeMo's float64 search, ties included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nestkit.config import QuantizerConfig
from nestkit.model import quantizer as quantizer_module
from nestkit.model.quantizer import RandomProjectionQuantizer


def make(**changes: object) -> RandomProjectionQuantizer:
    cfg = QuantizerConfig(
        feat_in=20, code_dim=16, num_books=1, num_classes=512, combine_time_steps=4, squeeze_single=False
    )
    for key, value in changes.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    return RandomProjectionQuantizer(cfg)


def nemo_tokens(q: RandomProjectionQuantizer, features: torch.Tensor) -> torch.Tensor:
    """NeMo 2.6.2's algorithm, written out: float64 (B, T, books, D, V) distances (or cosine scores)."""
    x = q.project(features)
    if q.cfg.dist_fn == "cosine":
        return torch.einsum("btdh,dch->btdc", x.double(), q.codebooks).max(dim=-1)[1]
    return (x.unsqueeze(-1) - q.codebooks.transpose(1, 2).unsqueeze(0).unsqueeze(0)).norm(dim=-2).argmin(dim=-1)


@pytest.mark.parametrize("dist_fn", ["l2", "cosine"])
@pytest.mark.parametrize("num_books", [1, 3])
def test_tokens_equal_nemos_search_on_random_features(dist_fn, num_books):
    q = make(dist_fn=dist_fn, num_books=num_books)
    features = torch.randn(4, 20, 64)
    tokens = q(features)
    assert tokens.shape == (4, 16, num_books) and tokens.dtype == torch.long
    assert torch.equal(tokens, nemo_tokens(q, features))


def test_combined_time_steps_stack_consecutive_frames_feature_major():
    q = make(combine_time_steps=2, num_classes=64)
    features = torch.randn(1, 20, 6)
    stacked = features.transpose(1, 2).reshape(1, 3, 40)  # frames 2t, 2t+1 side by side
    expected = F.normalize(q.proj(stacked).view(1, 3, 1, 16), dim=-1)
    torch.testing.assert_close(q.project(features), expected)


def test_near_ties_are_decided_exactly_like_nemo():
    q = make(num_classes=8)
    codes = q.codebooks[0].clone()
    # a code and a copy nudged by less than float32 can see: their float32 scores tie
    codes[5] = F.normalize(codes[2] + 1e-9 * torch.randn(16, dtype=torch.float64), dim=0)
    q.codebooks.data[0] = codes
    rows = torch.cat([codes[2:3].float(), codes[5:6].float(), F.normalize(codes[2:3] + codes[5:6], dim=1).float()])
    exact = (rows.double()[:, :, None] - codes.T[None]).norm(dim=1).argmin(dim=1)
    assert torch.equal(q._nearest(rows, codes), exact)


@pytest.mark.parametrize("code_dim", [1, 16, 128, 512])
def test_tie_margin_covers_the_float32_error_bound_at_any_code_dim(code_dim):
    # a float32 score of unit vectors is within (code_dim + 1) * 2^-24 of exact; a gap within twice that
    bound = 2 * (code_dim + 1) * 2.0**-24
    assert quantizer_module.tie_margin(code_dim) >= 5 * bound
    q = make(code_dim=code_dim, num_classes=1024, dist_fn="cosine" if code_dim == 128 else "l2")
    features = torch.randn(2, 20, 64)
    assert torch.equal(q(features), nemo_tokens(q, features))


def test_all_zero_frames_tie_with_every_code_and_get_nemos_choice():
    q = make()
    features = torch.zeros(2, 20, 16)  # padding: projection 0, normalised to 0, every code at distance ~1
    features[1, :, :8] = torch.randn(20, 8)
    assert torch.equal(q(features), nemo_tokens(q, features))


def test_chunking_bounds_the_score_matrix_without_changing_tokens(monkeypatch):
    q = make()
    features = torch.randn(3, 20, 40)
    whole = q(features)
    monkeypatch.setattr(quantizer_module, "SCORE_CHUNK_ELEMENTS", 512 * 3)  # 3 rows at a time
    assert torch.equal(q(features), whole)


def test_frames_not_divisible_by_the_step_count_are_padded_with_zero_frames():
    q = make(combine_time_steps=4)
    features = torch.randn(2, 20, 10)
    padded = F.pad(features, (0, 2))
    assert q(features).shape == (2, 3, 1)
    assert torch.equal(q(features), q(padded))


def test_squeeze_single_and_time_ahead_layouts():
    q = make(squeeze_single=True)
    features = torch.randn(2, 20, 8)
    assert q(features).shape == (2, 2)
    q_time = make(time_ahead=True)
    assert torch.equal(q_time(features.transpose(1, 2)), make()(features))


def test_frozen_and_float64_codebooks_with_unit_norm():
    q = make(num_books=2)
    assert not any(p.requires_grad for p in q.parameters())
    assert q.codebooks.dtype == torch.float64 and q.codebooks.shape == (2, 512, 16)
    torch.testing.assert_close(q.codebooks.norm(dim=-1), torch.ones(2, 512, dtype=torch.float64))
    assert make(freeze=False).codebooks.requires_grad  # unfrozen when asked


def test_lookup_returns_code_vectors_in_nemos_layout():
    q = make(num_books=2)
    tokens = q(torch.randn(1, 20, 8))
    xq = q.lookup(tokens)
    assert xq.shape == (1, 16, 2, 2) and xq.dtype == torch.float64
    assert torch.equal(xq[0, :, 1, 1], q.codebooks[1, tokens[0, 1, 1]])


def test_a_quantizer_config_without_its_derived_sizes_is_refused_by_name():
    with pytest.raises(ValueError, match=r"got None for quantizer\.code_dim\)\. Build it with"):
        make(code_dim=None)
    with pytest.raises(ValueError, match=r"got None for quantizer\.feat_in\)"):
        RandomProjectionQuantizer(QuantizerConfig())


def test_unknown_distance_is_an_error():
    with pytest.raises(ValueError, match="dist_fn"):
        make(dist_fn="dot")
