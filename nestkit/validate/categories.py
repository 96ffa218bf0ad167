"""The stable names of everything `validate-manifest` can find, with severity, meaning and a hint.

These names are an interface: CI scripts filter on them and docs/validate-manifest.md documents
each one. Where a loader failure means the same thing, the name is the one in
`nestkit.data.audio.LOAD_FAILURES`, so a quarantine record from training and a validator finding
about the same file carry the same word. Severity belongs to the category: an error is something a
training run would trip on (or data that is useless), a warning is something worth a look.
"""

from __future__ import annotations

from dataclasses import dataclass

from nestkit.data.audio import LOAD_FAILURES

ERROR = "error"
WARNING = "warning"

# Stages, in the order the checks run; docs group the table by them.
STAGES = ("manifest", "line", "path", "header", "decode", "noise", "shard", "run")


@dataclass(frozen=True)
class Category:
    name: str
    severity: str  # ERROR or WARNING
    stage: str  # one of STAGES
    meaning: str
    hint: str  # what to do, used when the check that found it has no more specific hint


_FIX_DURATIONS = "Re-measure durations with `nestkit validate-manifest --fix-durations OUT`"
_REMOVE = "Re-encode the file or drop the line with `nestkit validate-manifest --write-clean OUT`"
_USELESS = "Remove the line: there is nothing to learn from"
_RECOPY = "Re-create or re-copy the shard"

# name, severity, stage, meaning (None: the loader's, from LOAD_FAILURES), what to do
_TABLE = (
    # the manifest as a whole
    ("empty_manifest", WARNING, "manifest", "the manifest has no entries", "Check that the right file was given"),
    (
        "manifest_corrupt",
        ERROR,
        "manifest",
        "the manifest cannot be read to its end (damaged gzip, I/O error)",
        "Re-create or re-download the manifest",
    ),
    # one line
    ("blank_line", WARNING, "line", "an empty or whitespace-only line (skipped by training)", "Delete the line"),
    (
        "malformed_json",
        ERROR,
        "line",
        "the line is not one JSON object (NaN/Infinity are not JSON either)",
        "Each line must be one JSON object",
    ),
    (
        "unknown_format",
        ERROR,
        "line",
        "the line is neither a NeMo entry nor a lhotse cut",
        "A NeMo line needs 'audio_filepath' and 'duration'; a lhotse cut needs 'id' and 'recording'",
    ),
    (
        "missing_field",
        ERROR,
        "line",
        "a required field is absent (audio_filepath, duration, or a lhotse cut's id)",
        "Add the field; a missing duration can be measured with --fix-durations OUT",
    ),
    ("invalid_field", ERROR, "line", "the audio path is not a non-empty string", "Fix the audio path"),
    ("invalid_duration", ERROR, "line", "duration is not a finite number of seconds > 0", _FIX_DURATIONS),
    ("invalid_offset", ERROR, "line", "offset is not a finite number of seconds >= 0", "Fix the offset or drop it"),
    ("invalid_cut", ERROR, "line", "lhotse cannot deserialize the cut", "Re-create the cut with lhotse"),
    (
        "duplicate",
        WARNING,
        "line",
        "the same file and segment is listed again (it is seen twice per epoch)",
        "Delete the repeated line",
    ),
    (
        "duplicate_id",
        WARNING,
        "line",
        "two lines get the same cut id, so `lookup`/`replay-batch` by id is ambiguous",
        "Give the files distinct names (NeMo ids are `<file stem>-L<line>`) or the cuts distinct ids",
    ),
    (
        "not_checked",
        WARNING,
        "line",
        "a lhotse cut that training hands to lhotse to load (URL, memory or command sources, transforms, "
        "mixed cuts): only its local files are checked",
        "Check that it loads with lhotse (`cut.load_audio()`)",
    ),
    (
        "too_short",
        WARNING,
        "line",
        "shorter than --min-duration; training leaves it out of the plan (min_duration)",
        "Drop it, or lower model.train_ds.min_duration if it is wanted",
    ),
    (
        "too_long",
        WARNING,
        "line",
        "longer than --max-duration; training leaves it out of the plan (max_duration)",
        "Split it into segments, or raise model.train_ds.max_duration",
    ),
    # the path, from stat alone
    ("missing", ERROR, "path", None, "Fix the manifest path or restore the file"),
    ("broken_symlink", ERROR, "path", None, "Fix the link or the manifest path"),
    ("symlink_loop", ERROR, "path", None, "Fix the link"),
    ("not_regular_file", ERROR, "path", None, "Point the manifest at the audio file itself"),
    ("unreadable", ERROR, "path", None, "Make the file readable by the training user"),
    # the header
    ("not_audio", ERROR, "header", None, _REMOVE),
    ("empty", ERROR, "header", None, "Remove the line or the file"),
    (
        "wrong_extension",
        WARNING,
        "header",
        "the file name's extension does not match the format in its header",
        "Rename the file so tools that go by the extension read it correctly",
    ),
    (
        "needs_resampling",
        WARNING,
        "header",
        "the sample rate differs from --target-rate; every load resamples it",
        "Resample the corpus once (e.g. `sox in.wav -r 16000 out.wav`) to save CPU in every epoch",
    ),
    (
        "needs_downmix",
        WARNING,
        "header",
        "more than one channel; every load reads them all and averages them",
        "Downmix the corpus once to save I/O and CPU in every epoch",
    ),
    (
        "duration_mismatch",
        WARNING,
        "header",
        "the manifest duration differs from the file by more than --duration-tolerance",
        _FIX_DURATIONS,
    ),
    ("truncated", ERROR, "header", None, _FIX_DURATIONS),
    (
        "truncated_file",
        WARNING,
        "header",
        "the file holds less audio than its own WAV header says (an interrupted copy or download)",
        "The file was cut short (interrupted copy?): re-copy or re-encode it",
    ),
    ("offset_beyond_end", ERROR, "header", None, "Fix the offset in the manifest"),
    # the decoded samples
    ("decode_error", ERROR, "decode", None, _REMOVE),
    ("nan_inf", ERROR, "decode", None, _REMOVE),
    (
        "out_of_range",
        ERROR,
        "decode",
        None,
        "Re-encode the file with samples scaled to [-1, 1], "
        "or drop the line with `nestkit validate-manifest --write-clean OUT`",
    ),
    ("all_zero", ERROR, "decode", "every sample of the segment is zero", _USELESS),
    ("dc_only", ERROR, "decode", "the segment is a constant (peak-to-peak below -80 dBFS) but not zero", _USELESS),
    (
        "clipping",
        WARNING,
        "decode",
        "more than --clip-fraction of the samples sit at full scale (>= --clip-level)",
        "Check the recording level; re-record or drop badly clipped files",
    ),
    # noise manifests only
    (
        "silent_noise",
        ERROR,
        "noise",
        "a noise segment whose RMS is at or below --noise-silence-db; mixing it adds nothing",
        "Remove it from the noise manifest",
    ),
    # shards (lhotse Shar directories, NeMo tarred datasets); a member's audio gets the categories above
    ("truncated_shard", ERROR, "shard", "the tar ends inside a header or a member's data: it was cut short", _RECOPY),
    (
        "unterminated_shard",
        WARNING,
        "shard",
        "the tar ends without its end-of-archive blocks: probably cut short at a member boundary",
        _RECOPY,
    ),
    (
        "corrupt_shard",
        ERROR,
        "shard",
        "a tar header with a bad checksum or unreadable fields: nothing after it can be located",
        "Re-create the shard",
    ),
    (
        "duplicate_member",
        ERROR,
        "shard",
        "two members of one tar with the same name: readers disagree on which one the name means",
        "Rename or remove one of them, or re-create the shard",
    ),
    (
        "not_regular_member",
        WARNING,
        "shard",
        "a directory, link, device or sparse member in a tar: not audio, never read",
        "Re-create the shard with regular files only",
    ),
    (
        "unreachable",
        ERROR,
        "shard",
        "the shard's server cannot be reached, answers with an error, or ignores byte ranges",
        "Check the URL, the network and the server (it must answer HTTP Range requests)",
    ),
    (
        "stale_index",
        ERROR,
        "shard",
        "a saved member index that training would load does not match the tar (rewritten after indexing, "
        "unnoticed by size and time stamps): members would be read at the wrong bytes",
        "Delete the saved index; training rebuilds it",
    ),
    (
        "member_missing",
        ERROR,
        "shard",
        "a manifest line or cut whose member is not in its shard (NeMo skips it silently, lhotse stops)",
        "Re-create the shard from the manifest, or drop the line",
    ),
    (
        "not_in_manifest",
        ERROR,
        "shard",
        "a tar member that no manifest line or cut refers to (NeMo stops with 'Mismatched entry')",
        "Add its line to the manifest, or re-create the shard from the manifest",
    ),
    (
        "shard_id_mismatch",
        ERROR,
        "shard",
        "a line's shard_id is not its manifest's shard, or its member is in another shard's tar",
        "Fix the line's shard_id, or re-create the tarred dataset with NeMo's converter",
    ),
    (
        "missing_shard_id",
        ERROR,
        "shard",
        "a line of a single tarred manifest without an integer shard_id: NeMo cannot place it",
        "Add the shard_id of the tar that holds its member",
    ),
    (
        "unknown_shard_id",
        ERROR,
        "shard",
        "a tar or manifest path in which NeMo's pattern finds no shard id (NeMo asserts)",
        "Name tars `audio_<N>.tar` and per-shard manifests `manifest_<N>.json`, as NeMo's converter does",
    ),
    (
        "shard_without_lines",
        ERROR,
        "shard",
        "a tar whose shard id no manifest line has (NeMo asserts that the sets of ids are equal)",
        "Give the tarred manifest(s) of every tar, or leave the tar out of tarred_audio_filepaths",
    ),
    (
        "lines_without_shard",
        ERROR,
        "shard",
        "manifest lines whose shard id no tar has (NeMo asserts that the sets of ids are equal)",
        "Add the missing tar to tarred_audio_filepaths, or fix the lines' shard_id",
    ),
    (
        "not_shar",
        ERROR,
        "shard",
        "no cuts.NNNNNN.jsonl(.gz) file: not a lhotse Shar directory",
        "Give the directory that `CutSet.to_shar` wrote",
    ),
    (
        "shard_gap",
        ERROR,
        "shard",
        "missing shard numbers in a Shar directory: lhotse pairs fields by sorted position, so later shards pair wrongly",
        "Restore the missing shards, or renumber the rest consecutively",
    ),
    (
        "field_missing",
        ERROR,
        "shard",
        "a Shar shard number with a cuts file but no file of some field (or the reverse)",
        "Restore the missing file, or remove the shard's other files",
    ),
    (
        "foreign_file",
        ERROR,
        "shard",
        "a file in a Shar directory that is not a shard: lhotse's `from_shar(in_dir=...)` reads it as a field and fails",
        "Move it out of the directory",
    ),
    (
        "count_mismatch",
        ERROR,
        "shard",
        "a Shar tar with more or fewer (data, metadata) member pairs than its shard has cuts",
        "Re-create the shard with `CutSet.to_shar`",
    ),
    (
        "id_mismatch",
        ERROR,
        "shard",
        "a Shar member pair whose name is not the id of the cut lhotse pairs it with (lhotse stops: 'Mismatched IDs')",
        "Re-create the shard with `CutSet.to_shar`: members must be in the order of the cuts file",
    ),
    (
        "odd_members",
        ERROR,
        "shard",
        "a Shar tar with an odd number of members: lhotse reads (data, metadata) pairs and stops",
        "Re-create the shard with `CutSet.to_shar`",
    ),
    (
        "no_data",
        ERROR,
        "shard",
        "a Shar cut stored without audio (a .nodata placeholder): nothing to train on",
        "Drop the cut, or re-create the shard from cuts that have recordings",
    ),
    # the validator itself
    (
        "timeout",
        ERROR,
        "run",
        "checking the file or member took longer than --timeout, or indexing the shard longer than "
        "--shard-timeout (a stalled mount or server, a pathological file)",
        "A stalled mount or a very slow file: check the storage, or raise --timeout",
    ),
    (
        "worker_crash",
        ERROR,
        "run",
        "the process checking this file died (a crash in the decoder)",
        "Re-encode the file or drop it; please report it if the file is valid",
    ),
    ("internal_error", ERROR, "run", "validate-manifest itself failed on this file", "Please report it with the file"),
)

CATEGORIES: dict[str, Category] = {
    name: Category(name, severity, stage, meaning if meaning is not None else LOAD_FAILURES[name], hint)
    for name, severity, stage, meaning, hint in _TABLE
}


# What a check expected, for loader and parser messages that only say what went wrong.
EXPECTED = {
    "malformed_json": "one JSON object per line",
    "invalid_cut": "a cut that lhotse can deserialize",
    "missing": "an audio file at this path",
    "broken_symlink": "a link to an existing file",
    "symlink_loop": "a chain of links that ends at a file",
    "unreadable": "a file this user can read",
    "not_audio": "a format libsndfile reads (WAV, FLAC, OGG, MP3, ...)",
}


def expected_form(category: str, problem: str, got: str | None = None) -> str:
    """`problem` in the `<problem> (expected X, got Y)` form.

    "no such file" becomes "no such file (expected an audio file at this path, got nothing)";
    "malformed JSON (unexpected end of data)" becomes "malformed JSON (expected one JSON object per
    line, got unexpected end of data)". Messages that already say what they expected are kept.
    """
    if "(expected" in problem or category not in EXPECTED:
        return problem
    head, _, detail = problem.partition(" (")
    detail = detail[:-1] if detail.endswith(")") else detail
    return f"{head} (expected {EXPECTED[category]}, got {got or detail or 'nothing'})"


def hint_of(message: str, problem: str) -> str | None:
    """The hint after the problem in a `<thing>: <problem>. <hint>` message, if there is one."""
    return None if message.endswith(problem) else message.rsplit(f"{problem}. ", 1)[-1]


def severity(category: str) -> str:
    return CATEGORIES[category].severity


def default_hint(category: str) -> str:
    return CATEGORIES[category].hint


@dataclass(frozen=True)
class Finding:
    """One problem, where it is and what to do about it. The JSON report is a list of these."""

    manifest: str  # a manifest, a Shar cuts file, or for a finding about a whole shard the shard (tar) itself
    line: int  # 1-based; 0 for the manifest (or shard) as a whole
    path: str | None  # the resolved audio path, `shard:member` for a tar member, or the shard
    category: str
    severity: str
    reason: str  # `<thing>: <problem> (expected X, got Y). <hint>`


def finding(manifest: str, line: int, path: str | None, category: str, reason: str) -> Finding:
    return Finding(manifest, line, path, category, severity(category), reason)
