"""Checkpoints a run can trust: written atomically in their own folder, checked before a resume.

Saving. Lightning 2.6's `TorchCheckpointIO` saves through fsspec's local "transaction": it writes a
temporary file from `tempfile.mkstemp()` (in $TMPDIR, usually /tmp, another file system) and then
`shutil.move`s it over the target -- across file systems that is a copy *into* the target, so a
disk that fills during the copy leaves a truncated `last.ckpt` where an intact one was.
`AtomicCheckpointIO` (installed on nestkit's Trainer, so ModelCheckpoint and SaveLastOnEnd both
use it) writes `.<name>.<pid>.tmp` in the checkpoint's own folder, fsyncs it and renames it over
the target: a reader sees the old checkpoint or the new one, never half of one, and a failed save
leaves the previous file untouched and names the file and the reason.

Resuming. `check_checkpoint` opens a checkpoint the way Lightning will (`torch.load`, on the CPU,
memory-mapped so a large file costs no copy) and checks what a resume needs: a `state_dict` and
nestkit's data position. `newest_intact` finds the newest `stepN.ckpt` that passes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pytorch_lightning.plugins.io import TorchCheckpointIO

from nestkit.core.errors import NestkitError
from nestkit.runfolder.layout import checkpoints_dir
from nestkit.runfolder.records import describe_os_error
from nestkit.training.module import DATA_POSITION_KEY

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
PERIODIC = re.compile(r"^step(\d+)\.ckpt$")  # ModelCheckpoint's every-N-steps files (trainer.py names them)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but temporary file + fsync + rename in the target's folder."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):  # a remote URL: fsspec's own transaction is the right tool there
            return super().save_checkpoint(checkpoint, path, storage_options)
        import torch

        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_folder(path.parent)
        except (OSError, RuntimeError) as exc:  # torch reports a failed write as RuntimeError
            try:
                tmp.unlink()
            except OSError:  # never created
                pass
            reason = describe_os_error(exc) if isinstance(exc, OSError) else _first_line(exc)
            kept = "the previous one is intact" if path.exists() else "no earlier version exists"
            raise NestkitError(
                f"checkpoint {path}: cannot be written ({reason}); {kept}. Free space in {path.parent} "
                "and resume with `nestkit train CONFIG --resume`"
            ) from None


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a crash right after must not bring the old name back)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a file system that cannot open folders: the rename is all we can do
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename has happened
        pass
    finally:
        os.close(fd)


def _first_line(exc: BaseException) -> str:
    """`RuntimeError: PytorchStreamReader failed reading zip archive: ...` up to its first sentence
    (torch appends a paragraph of advice)."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(exc).__name__}: {first.split('. ', 1)[0].rstrip('.')}"


def check_checkpoint(path: str | os.PathLike) -> str | None:
    """What is wrong with `path` as a checkpoint to resume from, in a few words that follow "<file>
    is" (truncated, empty, damaged, unreadable, missing its ...); None when nothing is."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"unreadable ({describe_os_error(exc)})"
    if size == 0:
        return "empty (0 bytes: a save that never wrote, e.g. on a full disk)"
    whole_zip = zipfile.is_zipfile(path)  # its end (the zip's central directory) is there
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=whole_zip)
    except (
        OSError,  # torch seeks past the end of a short file: EINVAL
        RuntimeError,
        EOFError,
        ValueError,
        KeyError,
        AttributeError,
        ImportError,
        pickle.UnpicklingError,
    ) as exc:
        detail = _first_line(exc)
        if head == ZIP_MAGIC and not whole_zip:
            return f"truncated ({size:,} bytes; the end of its zip archive is missing: {detail})"
        if head != ZIP_MAGIC:
            return f"not a torch checkpoint ({size:,} bytes; torch.load: {detail})"
        return f"damaged ({size:,} bytes; torch.load: {detail})"
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return f"missing its state_dict (expected a Lightning checkpoint, got {type(checkpoint).__name__})"
    if DATA_POSITION_KEY not in checkpoint:
        return f"missing its data position (expected the key {DATA_POSITION_KEY!r} that `nestkit train` saves)"
    return None


def periodic_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the run's stepN.ckpt files, newest first."""
    folder = checkpoints_dir(run_dir)
    found = []
    for path in folder.glob("step*.ckpt") if folder.is_dir() else []:
        match = PERIODIC.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def newest_intact(run_dir: str | os.PathLike, skip: Path | None = None) -> tuple[Path | None, list[str]]:
    """The newest stepN.ckpt that passes `check_checkpoint`, and one line per damaged one passed over."""
    damaged: list[str] = []
    for _, path in periodic_checkpoints(run_dir):
        if skip is not None and path.resolve() == Path(skip).resolve():
            continue
        problem = check_checkpoint(path)
        if problem is None:
            return path, damaged
        damaged.append(f"{path.name} is {problem}")
    return None, damaged
