"""NeMo tarred datasets: NeMo's path expansion and its rules for pairing manifest lines with tar members.

The rules are NeMo's (sources and line numbers in /work/notes/shards.md):

* `tarred_audio_filepaths` / `manifest_filepath` strings are expanded by `expand_sharded_filepaths`: every
  `(`, `[`, `<`, `_OP_` becomes `{` and every `)`, `]`, `>`, `_CL_` becomes `}` (anywhere in the string,
  directory names included), then braceexpand 0.1.7 without escapes. A list is taken as is.
* The shard id of a tar comes from its path (`audio[^/]*_(\\d+)[^/]*\\.tar`); of a manifest, from its path
  when there are several (`manifest[^/]*_(\\d+)[^/]*\\.json`), else from each line's `shard_id`.
* Within a shard, a line refers to the member named by its `audio_filepath` with NeMo's `-subN` suffix
  removed: the converter writes a file once per shard and names its further lines `<name>-sub1.ext`, ...
  (NeMo's lhotse reader, `LazyNeMoTarredIterator`, strips the suffix again; its older webdataset reader
  never matches such lines and drops them silently).

Where NeMo skips, drops or asserts, nestkit reports a `NemoFinding` naming the manifest line, the shard
and the member, so that `validate` can show all of it at once.
"""

from __future__ import annotations

import gzip
import itertools
import os
import re
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from nestkit.core.errors import ConfigError, ManifestError
from nestkit.data.shards.ranged import DEFAULT_POLICY, RetryPolicy, read_whole
from nestkit.data.shards.tar_index import MemberAddress, TarIndex

_OPEN_TOKENS = ("(", "[", "<", "_OP_")
_CLOSE_TOKENS = (")", "]", ">", "_CL_")
TAR_SHARD_ID = re.compile(r"audio[^/]*_(\d+)[^/]*\.tar")
MANIFEST_SHARD_ID = re.compile(r"manifest[^/]*_(\d+)[^/]*\.json")
SUB_SUFFIX = re.compile(r"^(?P<stem>.+)(?P<sub>-sub\d+)(?P<ext>\.\w+)?$")

NEMO_FINDINGS = {
    "shard_id_mismatch": "a line's shard_id is not its manifest's shard, or its member is in another shard",
    "missing_shard_id": "a line of a single tarred manifest without shard_id: NeMo cannot place it",
    "member_missing": "a line whose member is not in its shard's tar (NeMo never yields it, silently)",
    "not_in_manifest": "a tar member no line refers to (NeMo raises 'Mismatched entry' unless "
    "skip_missing_manifest_entries, which drops it)",
    "duplicate_member": "two members of one tar with the same name (NeMo reads both, each with all its lines)",
    "unknown_shard_id": "a tar or manifest path in which NeMo's pattern finds no shard id (NeMo asserts)",
    "shard_without_lines": "a tar whose shard id no manifest has (NeMo asserts the id sets are equal)",
    "lines_without_shard": "manifest lines whose shard id no tar has (NeMo asserts the id sets are equal)",
    "bad_line": "a manifest line that is not a usable JSON object",
}


# ------------------------------------------------------------------------------------------------
# Path expansion


_INT_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.-?(\d+))?$")
_ALPHABET = string.ascii_uppercase + string.ascii_lowercase


def brace_expand(pattern: str) -> list[str]:
    """Bash-style brace expansion with braceexpand 0.1.7's rules (as NeMo calls it: escape=False).

    `{a,b}` alternatives (nested, empty items allowed), `{1..3}`, `{3..1}`, negatives, a step
    `{0..10..2}`, zero padding when a bound other than "0" has a leading zero (`{00..10}`), letter
    ranges `{a..e}`; a group that is neither a range nor has a top-level comma stays literal (`{x}`).
    Unbalanced braces raise ValueError.
    """
    return list(_expand(pattern, pattern))


def _expand(pattern: str, whole: str) -> Iterator[str]:
    parts: list[Iterable[str]] = []
    depth, start = 0, 0
    for pos, ch in enumerate(pattern):
        if ch == "{":
            if depth == 0:
                if pos > start:
                    parts.append([pattern[start:pos]])
                start = pos
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced braces in {whole!r}")
            if depth == 0:
                inner = pattern[start + 1 : pos]
                alternatives = _group(inner, whole)
                parts.append(
                    alternatives if alternatives is not None else ["{" + x + "}" for x in _expand(inner, whole)]
                )
                start = pos + 1
    if depth != 0:
        raise ValueError(f"unbalanced braces in {whole!r}")
    if start < len(pattern):
        parts.append([pattern[start:]])
    return ("".join(p) for p in itertools.product(*[list(p) for p in parts]))


def _group(inner: str, whole: str) -> list[str] | None:
    """The alternatives of one `{...}` group, or None when it is not a range or a list."""
    m = _INT_RANGE.match(inner)
    if m:
        left, right, step = m.groups()
        padded = any(s.startswith(("0", "-0")) for s in (left, right) if s not in ("0", "-0"))
        width = max(len(left), len(right)) if padded else 0
        step_n = (int(step) or 1) if step else 1
        a, b = int(left), int(right)
        numbers = range(a, b + 1, step_n) if a < b else range(a, b - 1, -step_n)
        return [f"{n:0{width}d}" if width else str(n) for n in numbers]
    m = _CHAR_RANGE.match(inner)
    if m:
        left, right, step = m.groups()
        step_n = (int(step) or 1) if step else 1
        a, b = _ALPHABET.index(left), _ALPHABET.index(right)
        if a < b:
            return list(_ALPHABET[a : b + 1 : step_n])
        b = b or -len(_ALPHABET)
        return list(_ALPHABET[a : b - 1 : -step_n])
    items, depth, start = [], 0, 0
    for pos, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(inner[start:pos])
            start = pos + 1
    if not items:
        return None
    items.append(inner[start:])
    return [x for item in items for x in _expand(item, whole)]


def expand_nemo_paths(spec: str | Sequence[str], key: str = "tarred_audio_filepaths") -> list[str]:
    """NeMo's `expand_sharded_filepaths` (replicate strategy): the shard paths a config value names."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        return [os.fspath(p) for p in spec]
    for token in _OPEN_TOKENS:
        spec = spec.replace(token, "{")
    for token in _CLOSE_TOKENS:
        spec = spec.replace(token, "}")
    try:
        return brace_expand(spec)
    except ValueError as exc:
        raise ConfigError(
            [
                f"{key}: {exc} (expected balanced {{}}, (), [], <> or _OP_/_CL_ after NeMo's "
                "replacement). NeMo turns every (, [, < into {, even in folder names"
            ]
        ) from None


def shard_id_of(path: str, kind: str = "tar") -> int | None:
    """The shard id NeMo reads from a tar (`kind="tar"`) or manifest (`"manifest"`) path, or None."""
    m = (TAR_SHARD_ID if kind == "tar" else MANIFEST_SHARD_ID).search(path)
    return int(m.group(1)) if m else None


def tar_shard_ids(tars: Sequence[str]) -> list[tuple[int, bool]]:
    """NeMo's shard id of each tar: the number its path carries (True), else its position (False)."""
    out = []
    for position, tar in enumerate(tars):
        sid = shard_id_of(tar, "tar")
        out.append((position, False) if sid is None else (sid, True))
    return out


def unnamed_shard(tar: str, position: int) -> str:
    return (
        f"no shard id in the tar path {tar} (expected a name like audio_{position}.tar, matching "
        f"{TAR_SHARD_ID.pattern}); taken as shard {position} by its position"
    )


# ------------------------------------------------------------------------------------------------
# Member names


def member_name(audio_filepath: str) -> str:
    """The tar member a tarred manifest line refers to: its audio_filepath without NeMo's `-subN`."""
    m = SUB_SUFFIX.match(audio_filepath)
    return m.group("stem") + (m.group("ext") or "") if m else audio_filepath


def converter_member_name(audio_path: str) -> str:
    """The member name NeMo's convert_to_tarred_audio_dataset.py gives a file: the whole path (as the
    manifest resolves it) with '/' and '.' replaced by '_' before the extension."""
    base, ext = os.path.splitext(audio_path)
    return base.replace("/", "_").replace(".", "_") + ext


def sub_name(member: str, n: int) -> str:
    """The converter's name for the n-th further line of the same member (n >= 1): `<base>-sub<n><ext>`."""
    base, ext = os.path.splitext(member)
    return f"{base}-sub{n}{ext}"


# ------------------------------------------------------------------------------------------------
# Manifests and shards


@dataclass(frozen=True)
class NemoLine:
    manifest: str
    line: int  # 1-based
    item: dict

    @property
    def audio_filepath(self) -> str:
        return str(self.item.get("audio_filepath", ""))

    @property
    def member(self) -> str:
        return member_name(self.audio_filepath)

    @property
    def offset(self) -> float:
        return float(self.item.get("offset") or 0.0)

    @property
    def duration(self) -> float | None:
        d = self.item.get("duration")
        return float(d) if isinstance(d, (int, float)) and not isinstance(d, bool) else None


@dataclass(frozen=True)
class NemoFinding:
    kind: str  # one of NEMO_FINDINGS
    detail: str
    shard_id: int | None = None
    tar: str | None = None
    manifest: str | None = None
    line: int | None = None
    member: str | None = None

    def message(self) -> str:
        where = (
            f"manifest {self.manifest}:{self.line}"
            if self.manifest and self.line
            else f"shard {self.tar}"
            if self.tar
            else f"manifest {self.manifest}"
            if self.manifest
            else "tarred dataset"
        )
        return f"{where}: {self.detail}"


@dataclass
class TarredDataset:
    """A NeMo tarred dataset as NeMo pairs it: shard id -> tar, shard id -> manifest lines."""

    tars: dict[int, str]
    lines: dict[int, list[NemoLine]]
    findings: list[NemoFinding] = field(default_factory=list)


def _manifest_lines(path: str, policy: RetryPolicy) -> Iterator[tuple[int, bytes]]:
    data = read_whole(path, policy)
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if raw.strip():
            yield number, raw


def read_tarred_dataset(
    manifest_spec: str | Sequence[str], tar_spec: str | Sequence[str], policy: RetryPolicy = DEFAULT_POLICY
) -> TarredDataset:
    """Expand both config values and pair manifests, lines and tars by shard id as NeMo does."""
    from nestkit.data.manifest import decode_line

    manifests = expand_nemo_paths(manifest_spec, "manifest_filepath")
    tar_paths = expand_nemo_paths(tar_spec)
    findings: list[NemoFinding] = []
    tars: dict[int, str] = {}
    for position, (tar, (sid, named)) in enumerate(zip(tar_paths, tar_shard_ids(tar_paths))):
        if not named:
            findings.append(NemoFinding("unknown_shard_id", unnamed_shard(tar, position), position, tar))
        tars[sid] = tar
    lines: dict[int, list[NemoLine]] = {}
    single = len(manifests) == 1
    for manifest in manifests:
        file_sid = None if single else shard_id_of(manifest, "manifest")
        if not single and file_sid is None:
            findings.append(
                NemoFinding(
                    "unknown_shard_id",
                    f"no shard id in the manifest path (expected a name "
                    f"like manifest_0.json, matching {MANIFEST_SHARD_ID.pattern})",
                    manifest=manifest,
                )
            )
            continue
        for number, raw in _manifest_lines(manifest, policy):
            try:
                item = decode_line(raw, manifest, number)
            except ManifestError as err:
                findings.append(NemoFinding("bad_line", err.problem, manifest=manifest, line=number))
                continue
            line = NemoLine(manifest, number, item)
            written = item.get("shard_id")
            if single:
                if not isinstance(written, int) or isinstance(written, bool):
                    findings.append(
                        NemoFinding(
                            "missing_shard_id",
                            f"no integer shard_id (got {written!r}); a single tarred manifest places lines by it",
                            manifest=manifest,
                            line=number,
                            member=line.member,
                        )
                    )
                    continue
                sid = written
            else:
                if file_sid is None:  # unreachable: a manifest without its shard id was left out above
                    raise RuntimeError(f"manifest {manifest}: no shard id (expected the check above to skip it)")
                sid = file_sid
                if written is not None and written != file_sid:
                    findings.append(
                        NemoFinding(
                            "shard_id_mismatch",
                            f"shard_id {written!r} in a manifest of shard "
                            f"{file_sid} (expected {file_sid}); NeMo reads the line with shard "
                            f"{file_sid}",
                            file_sid,
                            tars.get(file_sid),
                            manifest,
                            number,
                            line.member,
                        )
                    )
            lines.setdefault(sid, []).append(line)
    for sid in sorted(set(tars) - set(lines)):
        findings.append(
            NemoFinding(
                "shard_without_lines",
                f"no manifest line has shard id {sid} (expected lines for every tar; NeMo asserts)",
                sid,
                tars[sid],
            )
        )
    for sid in sorted(set(lines) - set(tars)):
        first = lines[sid][0]
        findings.append(
            NemoFinding(
                "lines_without_shard",
                f"{len(lines[sid])} line(s) of shard {sid} but no tar "
                f"with that id (expected audio_{sid}.tar among tarred_audio_filepaths)",
                sid,
                None,
                first.manifest,
                first.line,
                first.member,
            )
        )
    return TarredDataset(tars, lines, findings)


@dataclass(frozen=True)
class NemoCutAddress:
    """A tarred manifest line as an address: its member's bytes, and the segment of them it means."""

    manifest: str
    line: int
    shard_id: int
    member: MemberAddress
    offset: float  # seconds into the member's audio
    duration: float | None


@dataclass
class TarredMatch:
    cuts: list[NemoCutAddress]
    findings: list[NemoFinding]


def match_members(dataset: TarredDataset, indexes: dict[str, TarIndex]) -> TarredMatch:
    """Pair every line with its member by NeMo's rule, and report what NeMo would skip, drop or refuse.

    `indexes` maps tar path -> its TarIndex (from `tar_index.index_shards`); a tar without an index (it
    could not be read) makes its lines unaddressable, reported as `member_missing` with the reason.
    """
    findings = list(dataset.findings)
    cuts: list[NemoCutAddress] = []
    where_is: dict[str, list[int]] = {}  # member name -> shard ids holding it, to name misplaced lines
    for sid, tar in dataset.tars.items():
        index = indexes.get(tar)
        for name in index.names if index is not None else ():
            where_is.setdefault(name, []).append(sid)
    for sid in sorted(dataset.tars):
        tar = dataset.tars[sid]
        index = indexes.get(tar)
        shard_lines = dataset.lines.get(sid, [])
        if index is None:
            for line in shard_lines:
                findings.append(
                    NemoFinding(
                        "member_missing",
                        f"member {line.member!r} cannot be read: the tar "
                        "has no index (it could not be read; see the shard's failure)",
                        sid,
                        tar,
                        line.manifest,
                        line.line,
                        line.member,
                    )
                )
            continue
        for f in index.findings:
            if f.kind == "duplicate_member":
                findings.append(NemoFinding("duplicate_member", f.detail, sid, tar, member=f.member))
        referenced = set()
        for line in shard_lines:
            address = index.address(line.member)
            if address is None:
                elsewhere = [s for s in where_is.get(line.member, []) if s != sid]
                if elsewhere:
                    findings.append(
                        NemoFinding(
                            "shard_id_mismatch",
                            f"member {line.member!r} is in shard "
                            f"{elsewhere[0]} ({dataset.tars[elsewhere[0]]}), not in shard {sid} "
                            f"(expected shard_id {elsewhere[0]}, got {sid})",
                            sid,
                            tar,
                            line.manifest,
                            line.line,
                            line.member,
                        )
                    )
                else:
                    findings.append(
                        NemoFinding(
                            "member_missing",
                            f"member {line.member!r} is not in {tar} (expected "
                            f"it among the {len(index)} members of shard {sid}); NeMo skips the "
                            "line silently",
                            sid,
                            tar,
                            line.manifest,
                            line.line,
                            line.member,
                        )
                    )
                continue
            referenced.add(line.member)
            cuts.append(NemoCutAddress(line.manifest, line.line, sid, address, line.offset, line.duration))
        for name in dict.fromkeys(index.names):
            if name not in referenced:
                findings.append(
                    NemoFinding(
                        "not_in_manifest",
                        f"member {name!r} has no manifest line in shard {sid} "
                        "(NeMo stops with 'Mismatched entry', or drops it with "
                        "skip_missing_manifest_entries)",
                        sid,
                        tar,
                        member=name,
                    )
                )
    return TarredMatch(cuts, findings)
