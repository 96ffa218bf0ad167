"""Randomness as a pure function of position.

Every random draw in nestkit comes from a generator seeded by a key such as
(seed, "noise", epoch, batch index, cut id): never from global `random` / `np.random` / torch state,
worker count or load order. The same key gives the same draws in any process, which is what makes
`replay-batch` bit-exact.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def key_digest(*key: object) -> bytes:
    """A 16-byte digest of a key made of ints and strings (stable across processes and versions)."""
    h = hashlib.blake2b(digest_size=16)
    for part in key:
        h.update(f"{type(part).__name__}:{part}".encode())
        h.update(b"\x1f")
    return h.digest()


def generator(*key: object) -> np.random.Generator:
    """A numpy Generator seeded by `key`."""
    return np.random.Generator(np.random.PCG64(int.from_bytes(key_digest(*key), "little")))


def torch_generator(*key: object) -> torch.Generator:
    """A CPU torch.Generator seeded by `key` (63-bit seed)."""
    g = torch.Generator()
    g.manual_seed(int.from_bytes(key_digest(*key)[:8], "little") & (2**63 - 1))
    return g


def seed_int(*key: object) -> int:
    """A 63-bit integer seed for APIs that take one."""
    return int.from_bytes(key_digest(*key)[:8], "little") & (2**63 - 1)
