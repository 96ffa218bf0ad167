"""Building a cut index: one streaming pass over a corpus, columns appended to files in bounded chunks.

`build_index` writes the folder `nestkit.data.index` opens. The lines of a plain local manifest are their
own text (the index stores byte ranges into the manifest); the lines of a gzip or remote manifest, and of
every Shar cuts file, are copied (inflated) into `lines.bin`. Unusable lines are left out and listed
(`index_io.Problems`); whether a run may go on without them is decided when the index is opened. Shards
are built in `index_shards`.
"""

from __future__ import annotations

import os
import time

import numpy as np

from nestkit.data.corpus import KIND_MANIFEST, KIND_SHAR, KIND_TARRED, Corpus
from nestkit.data.index_io import (
    COLUMNS,
    READ_ERRORS,
    SHARD_COLUMNS,
    Build,
    Columns,
    Problems,
    decode_lines,
    detect_lines_format,
    id_hash,
    manifest_stat,
    progress_bar,
    split_lines,
    text_chunks,
)
from nestkit.data.index_shards import index_shar, index_tarred
from nestkit.data.manifest import FORMAT_LHOTSE, FORMAT_NEMO, unreadable
from nestkit.data.shards.ranged import DEFAULT_POLICY, RetryPolicy, is_url


def build_index(
    corpus: Corpus,
    folder: str,
    progress: bool | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    cache_dir: str | None = None,
) -> dict:
    """Index `corpus` into the (empty) folder `folder`; returns the meta data written to meta.json."""
    started = time.perf_counter()
    names = dict(COLUMNS, **(SHARD_COLUMNS if corpus.sharded else {}))
    with open(os.path.join(folder, "lines.bin"), "wb") as blob, progress_bar(progress) as bar:
        build = Build(folder, corpus, policy, cache_dir, Columns(folder, names), blob, Problems(folder), bar)
        try:
            if corpus.kind == KIND_MANIFEST:
                for number, path in enumerate(corpus.manifests):
                    _index_manifest(build, number, path)
            elif corpus.kind == KIND_SHAR:
                index_shar(build)
            elif corpus.kind == KIND_TARRED:
                index_tarred(build)
            else:
                raise ValueError(f"corpus kind {corpus.kind!r}")
        finally:
            build.columns.close()
            build.problems.close()
    return {
        "kind": corpus.kind,
        "rows": build.columns.rows,
        "columns": names,
        "sources": build.sources,
        "shards": build.shards,
        "exts": build.exts,
        "problems": build.problems.count,
        "problems_kept": [
            {"manifest": p.manifest, "line": p.line, "problem": p.problem, "hint": p.hint} for p in build.problems.kept
        ],
        "notices": build.notices,
        "built_s": round(time.perf_counter() - started, 3),
    }


# ------------------------------------------------------------------------------------------------
# Per-file manifests


def _index_manifest(b: Build, number: int, path: str) -> None:
    stat = manifest_stat(path, b.policy)
    in_blob = is_url(path) or path.endswith(".gz")
    task = b.bar.add_task(f"indexing {os.path.basename(path)}", total=stat["size"])
    first_row, fmt, line_no, pos = b.columns.rows, None, 1, 0
    try:
        for chunk in text_chunks(path, stat["size"], b.policy, lambda n: b.bar.advance(task, n)):
            base = b.add_text(chunk) if in_blob else pos
            lines, starts, lengths = split_lines(chunk)
            fmt = fmt or detect_lines_format(lines)
            lhotse = fmt == FORMAT_LHOTSE
            decoded = decode_lines(
                lines, lengths, fmt or FORMAT_NEMO, path, line_no, b.problems, _lhotse_id if lhotse else None
            )
            ids = np.asarray(decoded.kept, np.uint64) if lhotse else np.zeros(len(decoded.rows), np.uint64)
            b.columns.append(
                duration=decoded.durations,
                source=np.full(len(decoded.rows), number),
                line=line_no + decoded.rows,
                start=base + starts[decoded.rows],
                length=lengths[decoded.rows],
                id_hash=ids,
            )
            line_no += len(lines)
            pos += len(chunk)
    except READ_ERRORS as exc:
        b.problems.add(unreadable(path, exc))  # the lines read before stay usable
    b.sources.append(
        {
            "path": path,
            "format": fmt or FORMAT_NEMO,
            "text": "blob" if in_blob else "file",
            "stat": stat,
            "rows": [first_row, b.columns.rows],
        }
    )


def _lhotse_id(item: dict) -> int:
    return id_hash(str(item.get("id")))
