"""Validate manifests before training: every line, every path, every header, every sample.

    report = validate(["train.json"], noise=["noise.json"])
    report.findings        # every problem found, in manifest order
    report.exit_code(strict=False)

Three stages, each in its own module:

1. lines: each manifest line through the trainer's own parsers, plus cross-line checks;
2. pool + audio: each audio file, once for all lines that use it, in worker processes under a
   per-file time limit (stat, header, segment bounds, and unless `decode=False` the decoded
   samples through the loader's sample rules);
3. here: findings joined back to manifest lines, and a summary.

Sharded datasets (lhotse Shar, NeMo tarred) go through `shards` in the same worker pool: each tar
indexed under a per-shard limit, lines paired with members, each member checked like a file.

Nothing stops at the first problem and nothing is dropped: every line that training would refuse
or stumble on has an error finding, and every file gets a result (`timeout` and `worker_crash`
included).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nestkit.config import DatasetConfig
from nestkit.validate.audio import CheckSettings, FileResult, FileTask, Segment
from nestkit.validate.categories import ERROR, WARNING, Finding, finding
from nestkit.validate.lines import Entry, ManifestSource, Scan, scan_manifests
from nestkit.validate.pool import WorkerPool

if TYPE_CHECKING:  # the shard layer loads only when shards are checked: manifests-only runs start faster
    from nestkit.validate.shards import ShardCheck, ShardSource

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_SHARD_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ValidateOptions:
    checks: CheckSettings = field(default_factory=CheckSettings)
    min_duration_s: float = DatasetConfig.min_duration or 0.0  # training's plan leaves shorter cuts out
    max_duration_s: float = DatasetConfig.max_duration or 0.0
    jobs: int = 0  # 0: all cores
    timeout_s: float = DEFAULT_TIMEOUT_S  # per file or tar member
    shard_timeout_s: float = DEFAULT_SHARD_TIMEOUT_S  # per shard index (over HTTP: the whole shard is read)


@dataclass
class Report:
    scan: Scan
    results: list[FileResult | None]  # per entry (None: no file check, e.g. the line was refused)
    findings: list[Finding]
    files: int
    elapsed_s: float
    decoded: bool
    shards: ShardCheck | None = None

    @property
    def errors(self) -> int:
        return sum(f.severity == ERROR for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.severity == WARNING for f in self.findings)

    def exit_code(self, strict: bool) -> int:
        return 1 if self.errors or (strict and self.warnings) else 0

    def failing_lines(self) -> set[tuple[str, int]]:
        """(manifest, line) of every line with an error: what --write-clean leaves out."""
        return {(f.manifest, f.line) for f in self.findings if f.severity == ERROR and f.line > 0}

    def manifests(self) -> list[str]:
        """Every manifest, cuts file and shard that findings may name, in report order."""
        sharded = self.shards.manifests if self.shards else []
        return list(dict.fromkeys([s.path for s in self.scan.sources] + sharded))

    def summary(self, strict: bool) -> dict:
        shards = self.shards
        return {
            "manifests": [s.path for s in self.scan.sources if not s.noise],
            "noise_manifests": [s.path for s in self.scan.sources if s.noise],
            "lines": self.scan.lines + (shards.lines if shards else 0),
            "files": self.files,
            "shards": shards.shards if shards else 0,
            "members": shards.members if shards else 0,
            "decoded": self.decoded,
            "errors": self.errors,
            "warnings": self.warnings,
            "lines_with_errors": len(self.failing_lines()),
            "categories": dict(sorted(Counter(f.category for f in self.findings).items())),
            "strict": strict,
            "exit_code": self.exit_code(strict),
            "elapsed_s": round(self.elapsed_s, 3),
            "files_per_s": round((self.files + (shards.members if shards else 0)) / self.elapsed_s, 1)
            if self.elapsed_s > 0
            else None,
        }


def file_tasks(entries: Sequence[Entry]) -> list[FileTask]:
    """One task per distinct file, in order of first use; segment refs are entry indices."""
    segments: dict[str, list[Segment]] = {}
    for ref, entry in enumerate(entries):
        segments.setdefault(entry.path, []).append(
            Segment(ref, entry.offset, entry.duration, entry.partial, entry.noise, entry.channel)
        )
    return [FileTask(path, tuple(uses)) for path, uses in segments.items()]


def validate(
    manifests: Sequence[str],
    noise: Sequence[str] = (),
    options: ValidateOptions = ValidateOptions(),
    on_progress: Callable[[int, int, str], None] | None = None,
    shards: Sequence[ShardSource] = (),
) -> Report:
    """Check manifests (and noise manifests, with the noise rules) and sharded datasets.

    Manifest paths must exist (the CLI checks). `on_progress(done, total, what)` follows each stage.
    """
    started = time.monotonic()
    sources = [ManifestSource(os.path.abspath(p), False) for p in manifests]
    sources += [ManifestSource(os.path.abspath(p), True) for p in noise]
    with WorkerPool(options.checks, options.jobs, options.timeout_s) as pool:  # workers start while we read
        scan = scan_manifests(sources, options.min_duration_s, options.max_duration_s)
        report = _check_files(pool, scan, on_progress)
        if shards:
            from nestkit.validate.shards import check_shards

            report.shards = check_shards(pool, shards, options, on_progress)
            report.findings += report.shards.findings
    report.elapsed_s = time.monotonic() - started
    return report


def _check_files(pool: WorkerPool, scan: Scan, on_progress: Callable[[int, int, str], None] | None) -> Report:
    sources = scan.sources
    tasks = file_tasks(scan.entries)
    results: list[FileResult | None] = [None] * len(scan.entries)
    findings = list(scan.findings)
    done = 0

    def on_result(index: int, result: FileResult) -> None:
        nonlocal done
        for segment in tasks[index].segments:
            results[segment.ref] = result
        for ref, category, reason in result.findings:
            entry = scan.entries[ref]
            findings.append(finding(sources[entry.source].path, entry.line, entry.path, category, reason))
        done += 1
        if on_progress:
            on_progress(done, len(tasks), "checking files")

    if on_progress and tasks:
        on_progress(0, len(tasks), "checking files")
    pool.run(tasks, on_result)
    order = {source.path: number for number, source in reversed(list(enumerate(sources)))}
    findings.sort(key=lambda f: (order[f.manifest], f.line))  # stable: line checks before file checks
    return Report(scan, results, findings, len(tasks), 0.0, pool.settings.decode)
