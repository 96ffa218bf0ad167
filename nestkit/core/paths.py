"""How paths are shown to a user: the same rule in every command and report."""

from __future__ import annotations

import os


def short_path(path: str | os.PathLike | None) -> str:
    """An absolute path relative to the working folder when it lies below it; a URL, a relative path
    or a path elsewhere as given; "-" for none.

    Tables stay narrow, CI annotations name repository files, and a path printed by one command can
    be pasted into the next one as is.
    """
    if not path:
        return "-"
    path = os.fspath(path)
    if "://" in path or not os.path.isabs(path):
        return path
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if relative.startswith("..") else relative
