"""Random-projection quantizer (BEST-RQ; NeMo's `RandomProjectionVectorQuantizer`), frozen targets.

Frames are stacked `combine_time_steps` at a time, projected to `num_books` x `code_dim`,
normalised to unit length, and each book picks its nearest code. Codes are unit vectors too, so
the nearest code in L2 is the one with the largest dot product: one (N, code_dim) x (code_dim, V)
matrix product per book in float32, instead of NeMo's float64 (B, T, books, code_dim, V) difference
tensor (about 1 GB for B=8 and 10 s).

Tokens must equal NeMo's exactly. float32 dot products are within (code_dim + 1) * 2^-24 of exact
(1e-6 for 16 products of unit vectors), so whenever the best and second-best scores are closer
than `tie_margin(code_dim)` the row is recomputed with NeMo's own float64 formula; every other
row's winner is certain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nestkit.config import QuantizerConfig
from nestkit.model.derived import filled
from nestkit.model.precision import full_precision

# Gap between the two best float32 scores below which a row is re-decided in float64 (see
# tie_margin). A fixed 1e-5 would not cover the float32 error from code_dim ~80 up.
TIE_MARGIN = 1e-5
TIE_MARGIN_FACTOR = 10.0
# Scores are computed this many at a time (4 MiB of float32), however many frames come in.
SCORE_CHUNK_ELEMENTS = 1 << 20


def tie_margin(code_dim: int) -> float:
    """A float32 score of unit vectors is within (code_dim + 1) * 2^-24 of exact (code_dim products
    summed, plus the codes rounded to float32), so a gap is within twice that; the margin is 5 times
    that bound, and never below TIE_MARGIN."""
    return max(TIE_MARGIN, TIE_MARGIN_FACTOR * (code_dim + 1) * 2.0**-24)


class RandomProjectionQuantizer(nn.Module):
    def __init__(self, cfg: QuantizerConfig):
        super().__init__()
        if cfg.dist_fn not in ("l2", "cosine"):
            raise ValueError(f"quantizer.dist_fn: unknown (expected l2 or cosine, got {cfg.dist_fn!r})")
        self.cfg = cfg
        feat_in = filled(cfg.feat_in, "quantizer.feat_in")
        num_classes = filled(cfg.num_classes, "quantizer.num_classes")
        self.num_books = filled(cfg.num_books, "quantizer.num_books")
        self.code_dim = filled(cfg.code_dim, "quantizer.code_dim")
        self.combine_time_steps = filled(cfg.combine_time_steps, "quantizer.combine_time_steps")
        self.proj = nn.Linear(feat_in * self.combine_time_steps, self.num_books * self.code_dim, bias=False)
        nn.init.xavier_normal_(self.proj.weight)
        codebooks = F.normalize(torch.randn(self.num_books, num_classes, self.code_dim, dtype=torch.float64), dim=-1)
        self.codebooks = nn.Parameter(codebooks)
        if cfg.freeze:
            self.requires_grad_(False)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D, T) features (or (B, T, D) with time_ahead) -> unit vectors (B, T', books, code_dim).

        T is right-padded with zero frames to a multiple of combine_time_steps (NeMo requires divisibility).
        """
        x = features if self.cfg.time_ahead else features.transpose(1, 2)
        batch, frames, _ = x.shape
        steps = self.combine_time_steps
        if frames % steps:
            x = F.pad(x, (0, 0, 0, steps - frames % steps))
        x = x.reshape(batch, x.shape[1] // steps, -1)
        x = self.proj(x)
        return F.normalize(x.view(batch, x.shape[1], self.num_books, self.code_dim), dim=-1)

    @torch.no_grad()
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T', books), or (B, T') when squeeze_single and one book; int64.

        Computed in float32 (ties in float64) under autocast too: tokens do not depend on the precision."""
        with full_precision(features.device):
            return self._tokens(features.float())

    def _tokens(self, features: torch.Tensor) -> torch.Tensor:
        x = self.project(features)
        batch, steps, books, code_dim = x.shape
        per_book = [self._nearest(x[:, :, book].reshape(-1, code_dim), self.codebooks[book]) for book in range(books)]
        tokens = torch.stack(per_book, dim=-1).view(batch, steps, books)
        if books == 1 and self.cfg.squeeze_single:
            tokens = tokens.squeeze(-1)
        return tokens

    def _nearest(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """x (N, code_dim) unit float32, codes (V, code_dim) float64 -> (N,) index of the nearest code."""
        count, classes = x.shape[0], codes.shape[0]
        if classes < 2:
            return torch.zeros(count, dtype=torch.long, device=x.device)
        codes_t = codes.to(x.dtype).T.contiguous()
        rows = max(1, min(count, SCORE_CHUNK_ELEMENTS // classes))  # bounded memory at any batch size
        scores = x.new_empty(rows, classes)  # one buffer for all chunks: no allocation per chunk
        best = x.new_empty(count, 2)
        best_index = torch.empty(count, 2, dtype=torch.long, device=x.device)
        for start in range(0, count, rows):
            chunk = slice(start, min(start + rows, count))
            chunk_scores = torch.mm(x[chunk], codes_t, out=scores[: chunk.stop - start])
            torch.topk(chunk_scores, 2, dim=1, out=(best[chunk], best_index[chunk]))
        tokens = best_index[:, 0].contiguous()
        close = (best[:, 0] - best[:, 1]) < tie_margin(x.shape[1])
        if close.any():
            # padding frames give identical rows (often all-zero ones, tied with every code): decide each once
            unique, inverse = torch.unique(x[close], dim=0, return_inverse=True)
            tokens[close] = self._nearest_exact(unique, codes)[inverse]
        return tokens

    def _nearest_exact(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """NeMo's float64 decision (smallest distance, or largest cosine; first index on ties)."""
        x64 = x.double()
        if self.cfg.dist_fn == "cosine":
            return (x64 @ codes.T).argmax(dim=1)
        return (x64[:, :, None] - codes.T[None]).norm(dim=1).argmin(dim=1)

    def lookup(self, tokens: torch.Tensor) -> torch.Tensor:
        """Code vectors of `tokens` (B, T', books) -> (B, code_dim, T', books) float64 (NeMo's `xq`)."""
        if tokens.dim() == 2:
            tokens = tokens.unsqueeze(-1)
        books = torch.arange(self.num_books, device=tokens.device)
        vectors = self.codebooks[books, tokens]  # (B, T', books, code_dim)
        return vectors.permute(0, 3, 1, 2)
