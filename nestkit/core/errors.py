"""Errors a user can act on.

Every message follows `<thing> <id>: <problem> (expected X, got Y). <hint>` so that the CLI can print
it as is, without a traceback.
"""

from __future__ import annotations


class NestkitError(Exception):
    """Base class: the CLI prints these without a traceback and exits with status 1."""


class UsageError(NestkitError):
    """What the command line asks for cannot be done as asked (a missing target, a wrong value):
    the CLI prints it on one line and exits with status 2, as for its own usage errors."""


class ConfigError(NestkitError):
    """One or more problems in a config; all of them are reported at once."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f"config {source}" if source else "config"
        lines = [f"{where}: {len(self.problems)} problem(s)"] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class ManifestError(NestkitError):
    """A manifest line that cannot be used, named by file:line."""

    def __init__(self, manifest: str, line: int, problem: str, hint: str = ""):
        self.manifest = manifest
        self.line = line
        self.problem = problem
        self.hint = hint
        # line 0: about the whole file (missing, not a regular file)
        message = f"manifest {manifest}:{line}: {problem}" if line else f"manifest {manifest}: {problem}"
        if hint:
            message += f". {hint}"
        super().__init__(message)


class ManifestProblems(ManifestError):
    """Every unusable line of a corpus's manifests, reported at once (the first one's fields are this
    error's own `manifest`, `line` and `problem`)."""

    SHOWN = 100  # problems listed in the message; the rest are counted (all of them are in `details`)

    def __init__(self, problems: list[ManifestError], total: int | None = None, details: str = "", hint: str = ""):
        self.problems = list(problems)
        self.total = len(self.problems) if total is None else total
        self.details = details
        first = self.problems[0]
        self.manifest, self.line, self.problem, self.hint = first.manifest, first.line, first.problem, first.hint
        lines = [f"manifests: {self.total} unusable line(s)"] + [f"  - {p}" for p in self.problems[: self.SHOWN]]
        if self.total > min(len(self.problems), self.SHOWN):
            lines.append(
                f"  ... and {self.total - min(len(self.problems), self.SHOWN)} more"
                + (f" (all in {details})" if details else "")
            )
        if hint:
            lines.append(hint)
        NestkitError.__init__(self, "\n".join(lines))


class AudioLoadError(NestkitError):
    """An audio file (or a segment of it) that cannot be turned into samples.

    `category` is a stable machine-readable name (see nestkit.data.audio.LOAD_FAILURES); the
    message says what was wrong and what to do.
    """

    def __init__(self, category: str, path: str, problem: str, hint: str = ""):
        self.category = category
        self.path = path
        self.problem = problem
        message = f"audio {path}: {problem}"
        if hint:
            message += f". {hint}"
        super().__init__(message)


class PlanError(NestkitError):
    """A batch plan that cannot be built or does not contain what was asked for."""
