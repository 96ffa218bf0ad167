"""Batch fingerprints: a stable hash of what went into a batch and of what came out.

fingerprint = sha256 over (cut ids, per-utterance augmentation records, XXH3 checksums of the clean
audio and of the added noise with their shapes and lengths). The noisy audio is their sum, so it is
covered. Training logs it per step and rank; `replay-batch` recomputes it to prove it rebuilt the
same batch. XXH3 (tens of GB/s) rather than a cryptographic hash keeps this well under a
millisecond per batch.
File-system paths, manifest lines and file offsets are left out, so a corpus moved to another mount, or
copied into Shar or NeMo tarred shards, keeps its fingerprints.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import numpy as np
import orjson
import xxhash


def rows_checksum(rows: Sequence[np.ndarray | None]) -> str:
    """Checksum of a zero-padded (B, T) tensor given its rows' unpadded contents (None = all zero).

    Hashing each row right after it is written reads it from cache; hashing the assembled tensor
    afterwards would read it from memory again.
    """
    h = xxhash.xxh3_64()
    for row in rows:
        if row is None:
            h.update(b"zero;")
        else:
            row = np.ascontiguousarray(row)
            h.update(f"{_dtype_name(row.dtype)}:{row.size};".encode())
            h.update(xxhash.xxh3_64_digest(row.view(np.uint8).data))
    return h.hexdigest()


@functools.cache
def _dtype_name(dtype: np.dtype) -> str:
    return str(dtype)  # ~9 us each time: numpy builds the name on every call


_LOCATION_KEYS = ("path", "manifest")
# Where an utterance's audio sits (its manifest line, its offset in the file) is location too: the same
# cuts copied into shards (other lines, segments cut out as members) keep their fingerprints. The audio
# checksum covers the content. (A noise draw's own "offset" is a random decision and stays.)
_UTTERANCE_LOCATION_KEYS = (*_LOCATION_KEYS, "line", "offset")


def _portable(record: dict, dropped: tuple[str, ...] = _LOCATION_KEYS) -> dict:
    return {k: _portable(v) if isinstance(v, dict) else v for k, v in record.items() if k not in dropped}


def batch_fingerprint(cut_ids: list[str], records: list[dict], checksums: dict[str, str | list[int]]) -> str:
    payload = orjson.dumps(
        {
            "cut_ids": cut_ids,
            "records": [_portable(r, _UTTERANCE_LOCATION_KEYS) for r in records],
            "checksums": checksums,
        },
        option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY,
    )
    return hashlib.sha256(payload).hexdigest()[:16]
