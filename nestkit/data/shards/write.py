"""Writing shards from per-file NeMo manifests: lhotse Shar (lhotse's own SharWriter) or NeMo's tarred layout.

Shard assignment is deterministic: lines in manifest order (manifests in the order given), shard k holds
usable lines [k * shard_size, (k + 1) * shard_size). A line that cannot be written (no such file, audio
lhotse cannot load, a name NeMo would misread) is left out and recorded in `ShardWrite.failures` with
its manifest:line and reason -- never dropped silently.

Shar: `SharWriter(fields={"recording": <format>})`, so lhotse's readers (and NeMo's `shar_path`) read the
result as they read any Shar; the audio is each cut's segment at its original rate and channels.
NeMo tarred: what `convert_to_tarred_audio_dataset.py` writes without `--slice_with_offset`: whole files
as members named by `converter_member_name`, a file repeated in a shard written once and its further lines
named `-subN`, lines keeping every key plus `shard_id` and `cut_id` (the per-file line's cut id, which
nestkit uses for the tarred line, so batches built from the tars equal those built from the files; NeMo
keeps unknown keys and ignores them), `tarred_audio_manifest.json` and
`sharded_manifests/manifest_K.json`. Unlike the converter, no line is dropped to even out shard sizes
(the last shard is smaller), lines keep manifest order, and member headers carry fixed metadata
(mtime 0, uid/gid 0) so that the same input gives byte-identical tars.

Every tar's member index is built by walking what was written (a check of the tar, too) and saved where
`tar_index.load_or_build` looks first.
"""

from __future__ import annotations

import gzip
import json
import os
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from nestkit.core.errors import AudioLoadError, ManifestError, NestkitError
from nestkit.data.shards.nemo_tarred import SUB_SUFFIX, converter_member_name, sub_name
from nestkit.data.shards.tar_index import build_index, published_index_path, save_index

CUT_ID_KEY = "cut_id"  # a tarred line's cut id (index_shards.tarred_cut_id reads it under the same key)


@dataclass(frozen=True)
class SourceLine:
    """One usable line of a per-file NeMo manifest."""

    manifest: str
    line: int
    item: dict  # the decoded line, every key
    path: str  # absolute audio path
    offset: float
    duration: float
    cut_id: str


@dataclass(frozen=True)
class WriteFailure:
    manifest: str
    line: int
    path: str | None
    reason: str

    def message(self) -> str:
        return f"manifest {self.manifest}:{self.line}: not written ({self.reason})"


@dataclass
class ShardWrite:
    layout: str  # "shar" | "nemo"
    out_dir: str
    tars: list[str]
    manifests: list[str]  # Shar cuts files, or NeMo manifests (all-shards manifest first)
    indexes: list[str]
    cuts: int
    failures: list[WriteFailure] = field(default_factory=list)
    seconds: float = 0.0


def read_source_lines(manifests: Sequence[str], failures: list[WriteFailure]) -> list[SourceLine]:
    """The usable lines of per-file NeMo manifests, in order; unusable ones go to `failures`.

    Cut ids follow nestkit's convention (`<audio stem>-L<line>`, data/manifest.py); an id seen before (the
    same stem and line in another manifest) gets `-2`, `-3`, ... so that member names stay unique.
    """
    from nestkit.data.manifest import decode_line, nemo_cut_id, nemo_entry

    out: list[SourceLine] = []
    seen: dict[str, int] = {}
    for manifest in manifests:
        with gzip.open(manifest, "rb") if manifest.endswith(".gz") else open(manifest, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    item = decode_line(raw, manifest, number)
                    entry = nemo_entry(item, manifest, number)
                except ManifestError as err:
                    failures.append(WriteFailure(manifest, number, None, err.problem))
                    continue
                cut_id = nemo_cut_id(entry, number)
                if cut_id in seen:
                    seen[cut_id] += 1
                    cut_id = f"{cut_id}-{seen[cut_id]}"
                else:
                    seen[cut_id] = 1
                out.append(SourceLine(manifest, number, item, entry.path, entry.offset, entry.duration, cut_id))
    return out


def _progress(total: int, label: str, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), disable=not enabled, transient=True
    )
    return bar, bar.add_task(label, total=total)


def _index_beside(tar: str) -> str:
    location = published_index_path(tar)
    save_index(build_index(tar), location)
    return location


# ------------------------------------------------------------------------------------------------
# lhotse Shar


def write_shar(
    manifests: Sequence[str] | str,
    out_dir: str,
    shard_size: int = 1000,
    audio_format: str = "flac",
    progress: bool = True,
) -> ShardWrite:
    """Per-file NeMo manifest(s) -> a Shar directory written by lhotse's SharWriter, indexes alongside.

    Each cut is its line's segment (`offset`, `duration`) of its file, id `<stem>-L<line>`, with
    `custom["source"] = {"manifest", "line", "audio_filepath", "offset"}` so that any cut of the Shar
    leads back to the line it came from.
    """
    import warnings

    from lhotse import Recording
    from lhotse.shar import SharWriter

    if shard_size < 1:
        raise NestkitError(f"shard size {shard_size}: not positive (expected cuts per shard >= 1)")
    manifests = [manifests] if isinstance(manifests, str) else list(manifests)
    started = time.perf_counter()
    failures: list[WriteFailure] = []
    lines = read_source_lines(manifests, failures)
    os.makedirs(out_dir, exist_ok=True)  # lhotse's writer does not create it
    written = 0
    bar, task = _progress(len(lines), "writing Shar", progress)
    with (
        bar,
        SharWriter(out_dir, fields={"recording": audio_format}, shard_size=shard_size) as writer,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # lhotse warns per cut about fields it was not asked to write
        for src in lines:
            try:
                cut = Recording.from_file(src.path, recording_id=src.cut_id).to_cut()
                if src.offset > 0 or abs(src.duration - cut.duration) > 1e-6:
                    cut = cut.truncate(offset=src.offset, duration=src.duration, preserve_id=True)
                written_path = src.item.get("audio_filepath", src.item.get("audio_filename"))
                cut.custom = {
                    "source": {
                        "manifest": src.manifest,
                        "line": src.line,
                        "audio_filepath": written_path,
                        "offset": src.offset,
                    }
                }
                writer.write(cut)
                written += 1
            except Exception as exc:  # lhotse and its audio backends raise many types; each is recorded
                failures.append(WriteFailure(src.manifest, src.line, src.path, f"{type(exc).__name__}: {exc}"))
            bar.advance(task)
        paths = writer.output_paths
    tars = list(paths.get("recording", [])) if written else []
    cuts_files = list(paths.get("cuts", [])) if written else []
    for path in cuts_files:
        _clear_gzip_time(path)
    return ShardWrite(
        "shar",
        out_dir,
        tars,
        cuts_files,
        [_index_beside(t) for t in tars],
        written,
        failures,
        time.perf_counter() - started,
    )


GZIP_MTIME = slice(4, 8)  # RFC 1952: the header's modification time, 4 bytes little-endian


def _clear_gzip_time(path: str) -> None:
    """Zero the time lhotse's gzip writer puts in a cuts file's header, so that the same input gives the
    same bytes (the content is untouched; readers ignore the field; 0 means "no time stamp")."""
    with open(path, "r+b") as f:
        head = f.read(10)
        if head[:2] == b"\x1f\x8b" and len(head) == 10:
            f.seek(GZIP_MTIME.start)
            f.write(bytes(GZIP_MTIME.stop - GZIP_MTIME.start))


# ------------------------------------------------------------------------------------------------
# NeMo tarred


def _shards(lines: list[SourceLine], size: int) -> Iterator[tuple[int, list[SourceLine]]]:
    for k in range(0, len(lines), size):
        yield k // size, lines[k : k + size]


def _usable(src: SourceLine) -> str | None:
    """Why a line cannot go into a NeMo tar, or None."""
    from nestkit.data.audio import check_path

    try:
        check_path(src.path)
    except AudioLoadError as err:
        return err.problem
    if SUB_SUFFIX.match(converter_member_name(src.path)):
        return (
            "the file name ends in -sub<N>, which NeMo's reader strips from member names (expected a name "
            "without it); rename the file"
        )
    return None


def _add_file(tar: tarfile.TarFile, name: str, path: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = os.path.getsize(path)
    info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
    with open(path, "rb") as f:
        tar.addfile(info, f)


def write_nemo_tarred(
    manifests: Sequence[str] | str,
    out_dir: str,
    shard_size: int = 1000,
    progress: bool = True,
) -> ShardWrite:
    """Per-file NeMo manifest(s) -> NeMo's tarred layout in `out_dir` (`audio_K.tar`,
    `tarred_audio_manifest.json`, `sharded_manifests/manifest_K.json`), an index beside every tar.

    Config for NeMo: `manifest_filepath: <out>/sharded_manifests/manifest__OP_0..N_CL_.json`,
    `tarred_audio_filepaths: <out>/audio__OP_0..N_CL_.tar`, N = number of shards - 1.
    """
    if shard_size < 1:
        raise NestkitError(f"shard size {shard_size}: not positive (expected lines per shard >= 1)")
    manifests = [manifests] if isinstance(manifests, str) else list(manifests)
    started = time.perf_counter()
    failures: list[WriteFailure] = []
    lines = []
    for src in read_source_lines(manifests, failures):
        problem = _usable(src)
        if problem:
            failures.append(WriteFailure(src.manifest, src.line, src.path, problem))
        else:
            lines.append(src)
    os.makedirs(os.path.join(out_dir, "sharded_manifests"), exist_ok=True)
    tars, shard_manifests, all_lines = [], [], []
    bar, task = _progress(len(lines), "writing NeMo tars", progress)
    with bar:
        for shard_id, chunk in _shards(lines, shard_size):
            tar_path = os.path.join(out_dir, f"audio_{shard_id}.tar")
            count: dict[str, int] = {}
            shard_lines = []
            with tarfile.open(tar_path + ".partial", "w", format=tarfile.PAX_FORMAT) as tar:
                for src in chunk:
                    name = converter_member_name(src.path)
                    if name not in count:
                        _add_file(tar, name, src.path)
                        count[name], to_write = 1, name
                    else:  # the converter's rule: written once per shard, further lines named -subN
                        to_write = sub_name(name, count[name])
                        count[name] += 1
                    shard_lines.append(
                        {**src.item, "audio_filepath": to_write, "shard_id": shard_id, CUT_ID_KEY: src.cut_id}
                    )
                    bar.advance(task)
            os.replace(tar_path + ".partial", tar_path)  # a crash never leaves a tar that looks whole
            manifest_path = os.path.join(out_dir, "sharded_manifests", f"manifest_{shard_id}.json")
            _write_jsonl(manifest_path, shard_lines)
            tars.append(tar_path)
            shard_manifests.append(manifest_path)
            all_lines += shard_lines
    whole = os.path.join(out_dir, "tarred_audio_manifest.json")
    _write_jsonl(whole, all_lines)
    return ShardWrite(
        "nemo",
        out_dir,
        tars,
        [whole] + shard_manifests,
        [_index_beside(t) for t in tars],
        len(all_lines),
        failures,
        time.perf_counter() - started,
    )


def _write_jsonl(path: str, items: list[dict]) -> None:
    with open(path + ".partial", "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    os.replace(path + ".partial", path)


def write_shards(
    manifests: Sequence[str] | str,
    out_dir: str,
    layout: str = "shar",
    shard_size: int = 1000,
    progress: bool = True,
    audio_format: str = "flac",
) -> ShardWrite:
    """`nestkit shard`'s entry point: `layout` "shar" or "nemo"."""
    if layout == "shar":
        return write_shar(manifests, out_dir, shard_size, audio_format, progress)
    if layout == "nemo":
        return write_nemo_tarred(manifests, out_dir, shard_size, progress)
    raise NestkitError(f"shard layout {layout!r}: unknown (expected 'shar' or 'nemo')")
