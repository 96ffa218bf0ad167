"""A real small file system that fills up: tmpfs mounted on a folder (the tests run as root).

`with small_tmpfs(folder, "256k") as fs: fs.fill(); ...; fs.free()` -- `fill` writes a file until
the kernel says ENOSPC (and then byte by byte, so not one byte is left), `free` removes it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

FILLER = ".filler"


class SmallFs:
    def __init__(self, path: Path):
        self.path = path

    def fill(self) -> int:
        """Take every free byte; returns how many were taken."""
        fd = os.open(self.path / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        taken = 0
        try:
            for chunk in (65536, 4096, 1):
                try:
                    while True:
                        taken += os.write(fd, b"x" * chunk)
                except OSError:
                    continue
        finally:
            os.close(fd)
        return taken

    def free(self) -> None:
        (self.path / FILLER).unlink(missing_ok=True)

    def is_full(self) -> bool:
        stats = os.statvfs(self.path)
        return stats.f_bavail == 0


def can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@contextlib.contextmanager
def small_tmpfs(path: str | os.PathLike, size: str = "256k"):
    """Mount a tmpfs of `size` on `path` (created if needed); unmounted on exit, whatever happened."""
    if not can_mount():
        pytest.skip("mounting a tmpfs needs root")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield SmallFs(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
