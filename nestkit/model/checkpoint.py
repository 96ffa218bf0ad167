"""Move NEST weights between NeMo and nestkit.

Reads a NeMo `.nemo` archive (a tar, optionally gzipped, holding `model_weights.ckpt`, often under
`./`), a Lightning `.ckpt` (its `state_dict`), or a plain state_dict `.pt`. NestModel's keys are
NeMo's, so the only translation is the LightningModule prefix: nestkit's trainer holds the model as
attribute `model`, so its checkpoints say `model.encoder...` where NeMo says `encoder...`.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from nestkit.core.errors import NestkitError

NEMO_WEIGHTS_MEMBER = "model_weights.ckpt"
LIGHTNING_PREFIX = "model."
ZIP_MAGIC = b"PK\x03\x04"
_LISTED_PER_KIND = 10  # keys shown per kind of problem; the count says how many there are


class CheckpointError(NestkitError):
    """A checkpoint that cannot be read, or whose weights do not fit the model."""

    def __init__(self, path: str | os.PathLike, problem: str, hint: str = "", details: tuple[str, ...] = ()):
        self.path = str(path)
        self.problem = problem
        message = f"checkpoint {path}: {problem}"
        if hint:
            message += f". {hint}"
        super().__init__("\n".join([message, *details]))


def read_state_dict(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The weights inside a `.nemo`, Lightning `.ckpt` or state_dict `.pt` file, on the CPU.

    Lightning checkpoints written by NeMo also pickle its config objects; torch refuses those in
    its safe (weights_only) mode, and `trust_pickle=True` allows them for files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file (expected a .nemo, .ckpt or .pt file)")
    if tarfile.is_tarfile(path):
        return _read_nemo_archive(path, trust_pickle)
    loaded = _torch_load(path.read_bytes(), path, trust_pickle)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    return _as_state_dict(loaded, path)


def _read_nemo_archive(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    with tarfile.open(path, "r:*") as archive:
        members = [m for m in archive.getmembers() if m.isfile() and Path(m.name).name == NEMO_WEIGHTS_MEMBER]
        if len(members) != 1:
            raise CheckpointError(
                path,
                f"not a NeMo archive with one weights file (expected 1 member named {NEMO_WEIGHTS_MEMBER}, got {len(members)})",
                "Give the .nemo file NeMo saved, or its extracted model_weights.ckpt",
            )
        weights = archive.extractfile(members[0])
        if weights is None:  # cannot happen: only regular files were kept above
            raise CheckpointError(path, f"{members[0].name} in the archive is not a regular file")
        data = weights.read()
    return _as_state_dict(_torch_load(data, path, trust_pickle), path)


def _torch_load(data: bytes, path: Path, trust_pickle: bool) -> object:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        # torch.save writes a zip archive; anything else the safe loader rejects is simply not a checkpoint
        if data[:4] == ZIP_MAGIC and "Weights only load failed" in str(exc):
            raise CheckpointError(
                path,
                "holds pickled Python objects besides tensors (expected tensors only, got objects torch's safe loader refuses)",
                "If you trust this file, load it with trust_pickle=True",
            ) from None
        raise CheckpointError(
            path, f"not a torch checkpoint (expected a torch.save file, got: {_first_line(exc)})"
        ) from None
    except (RuntimeError, EOFError, ValueError, KeyError, pickle.PickleError) as exc:
        raise CheckpointError(
            path, f"not a torch checkpoint (expected a torch.save file, got: {_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _as_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(
            path, f"no state_dict inside (expected a mapping of names to tensors, got {type(loaded).__name__})"
        )
    return dict(loaded)


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries whose key starts with `prefix`, with the prefix removed; the others are dropped."""
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def load_nemo_weights(
    model: nn.Module, path: str | os.PathLike, prefix: Optional[str] = None, trust_pickle: bool = False
) -> None:
    """Load NeMo (or nestkit Lightning) weights into `model`, strictly.

    `prefix` is removed from every key first; by default it is detected: none when the keys are
    the model's own, "model." when they come from nestkit's LightningModule. Any missing or
    unexpected key, or any shape mismatch, is an error listing all of them; nothing is loaded then.
    """
    state = read_state_dict(path, trust_pickle)
    expected = model.state_dict()
    if prefix is None:
        prefix = _detect_prefix(state, expected)
    if prefix:
        state = strip_prefix(state, prefix)
    check_compatible(expected, state, path)
    model.load_state_dict(state, strict=True)


def _detect_prefix(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    own = sum(key in expected for key in state)
    lightning = sum(key.startswith(LIGHTNING_PREFIX) and key[len(LIGHTNING_PREFIX) :] in expected for key in state)
    return LIGHTNING_PREFIX if lightning > own else ""


def check_compatible(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], path: str | os.PathLike
) -> None:
    """Raise CheckpointError naming every missing key, unexpected key and shape mismatch."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key}: expected shape {tuple(expected[key].shape)}, got {tuple(state[key].shape)}"
        for key in expected
        if key in state and expected[key].shape != state[key].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    counts = ", ".join(
        f"{len(items)} {kind}"
        for kind, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
        if items
    )
    details: list[str] = []
    for kind, items in (("missing key", missing), ("unexpected key", unexpected), ("shape mismatch", mismatched)):
        details += [f"  {kind}: {item}" for item in items[:_LISTED_PER_KIND]]
        if len(items) > _LISTED_PER_KIND:
            details.append(f"  ... and {len(items) - _LISTED_PER_KIND} more {kind}(s)")
    raise CheckpointError(
        path,
        f"weights do not fit the model: {counts} (expected the {len(expected)} keys of the model built from the config, "
        f"got {len(state)} keys)",
        "Check that the config (sizes, num_books, mask_position, ...) is the one the checkpoint was trained with",
        tuple(details),
    )


def export_nemo_state_dict(
    state_dict: Mapping[str, torch.Tensor], out_path: str | os.PathLike, prefix: str = LIGHTNING_PREFIX
) -> Path:
    """Write the weights under `prefix` (a LightningModule's `model.`) as a state_dict NeMo loads strictly.

    Pass `prefix=""` for a NestModel's own state_dict. Returns the path written.
    """
    out_path = Path(out_path)
    weights = strip_prefix(state_dict, prefix) if prefix else dict(state_dict)
    if not weights:
        raise CheckpointError(
            out_path,
            f"nothing to export (expected keys starting with {prefix!r}, got none of {len(state_dict)})",
            "Pass the prefix under which the LightningModule holds the NestModel",
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: value.detach().cpu() for key, value in weights.items()}, out_path)
    return out_path
