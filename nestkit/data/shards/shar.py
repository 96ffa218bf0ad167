"""lhotse Shar: a directory's shards (fields, numbering, gaps), their cut lines, each cut's member.

lhotse 1.33's reader (`LazySharIterator`) takes every file of a Shar directory, groups them by the name
before the first dot (the field) and pairs the fields' files by their SORTED POSITION, not by number; it
then pairs cut line i with the i-th (data, metadata) member pair of each field tar, checking only that the
data member's name minus its extension is the cut id. So a gap in one field's numbering silently shifts
every later shard, and a stray file breaks the directory. `discover_shar` reports both; `match_cuts` pairs
lines and members the way lhotse does and names every mismatch instead of asserting on the first.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from nestkit.data.shards.nemo_tarred import expand_nemo_paths
from nestkit.data.shards.ranged import DEFAULT_POLICY, RetryPolicy, read_whole
from nestkit.data.shards.tar_index import MemberAddress, TarIndex

SHAR_FILE = re.compile(r"^(?P<field>[^.]+)(?:\.(?P<number>\d+))?\.(?P<ext>jsonl\.gz|jsonl|tar\.gz|tar)$")

SHAR_FINDINGS = {
    "no_cuts": "no cuts.NNNNNN.jsonl(.gz) file: not a Shar directory",
    "gap": "missing shard numbers: lhotse pairs fields by sorted position, so later shards pair wrongly",
    "field_missing": "a shard number with cuts but without a file of some field (or the reverse)",
    "foreign_file": "a file that is not a Shar shard: lhotse's from_shar(in_dir) reads it as a field and fails",
    "count_mismatch": "a field tar with more or fewer member pairs than its shard has cut lines",
    "id_mismatch": "a member whose name is not its cut's id (lhotse stops with 'Mismatched IDs')",
    "odd_members": "an odd number of members: lhotse reads (data, metadata) pairs and stops",
    "no_data": "a cut stored without this field (a .nodata placeholder)",
    "bad_line": "a cuts line that is not a JSON object with an id",
}


@dataclass(frozen=True)
class SharFinding:
    kind: str  # one of SHAR_FINDINGS
    where: str  # the file concerned
    detail: str
    line: int | None = None
    cut_id: str | None = None

    def message(self) -> str:
        return f"shar {self.where}{f':{self.line}' if self.line else ''}: {self.detail}"


@dataclass(frozen=True)
class SharShard:
    number: int | None  # from the file name; None when the names carry no number
    cuts: str
    fields: dict[str, str]  # field -> tar (or jsonl) path or URL


@dataclass
class SharLayout:
    source: str
    shards: list[SharShard]
    findings: list[SharFinding] = field(default_factory=list)

    def tars(self, field_name: str = "recording") -> list[str]:
        return [s.fields[field_name] for s in self.shards if field_name in s.fields]


def discover_shar(directory: str) -> SharLayout:
    """The shards of a local Shar directory, paired as lhotse pairs them, with what would go wrong."""
    findings: list[SharFinding] = []
    by_field: dict[str, list[tuple[str, int | None]]] = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        m = SHAR_FILE.match(name)
        if m is None or not os.path.isfile(path):
            findings.append(
                SharFinding(
                    "foreign_file",
                    path,
                    f"not a Shar shard (expected <field>.NNNNNN.tar or "
                    f"cuts.NNNNNN.jsonl.gz, got {name!r}); lhotse's from_shar(in_dir=...) "
                    "takes every file as a field. Move it out of the directory",
                )
            )
            continue
        number = int(m.group("number")) if m.group("number") is not None else None
        by_field.setdefault(m.group("field"), []).append((path, number))
    return _pair(directory, by_field, findings)


def shar_from_fields(fields: Mapping[str, str | Sequence[str]]) -> SharLayout:
    """Shards named field by field (NeMo's `shar_path: {cuts: ..., recording: ...}`, local or URLs):
    each value expanded as NeMo expands it, then paired by position like lhotse."""
    by_field: dict[str, list[tuple[str, int | None]]] = {}
    for name, spec in fields.items():
        for path in expand_nemo_paths(spec, f"shar_path.{name}"):
            m = SHAR_FILE.match(path.rstrip("/").rpartition("/")[2])
            by_field.setdefault(name, []).append((path, int(m.group("number")) if m and m.group("number") else None))
    return _pair("shar_path", by_field, [], sort=False)


def _pair(
    source: str, by_field: dict[str, list[tuple[str, int | None]]], findings: list[SharFinding], sort: bool = True
) -> SharLayout:
    cuts = [(p, n) for p, n in by_field.pop("cuts", []) if ".jsonl" in p]
    if not cuts:
        findings.append(SharFinding("no_cuts", source, "no cuts.NNNNNN.jsonl(.gz) file (expected one per shard)"))
        return SharLayout(source, [], findings)
    numbers = [n for _, n in cuts if n is not None]
    if numbers:
        missing = sorted(set(range(min(numbers), max(numbers) + 1)) - set(numbers))
        if missing:
            findings.append(
                SharFinding(
                    "gap",
                    source,
                    f"cuts shard number(s) {_ranges(missing)} missing between "
                    f"{min(numbers)} and {max(numbers)} (expected consecutive numbers)",
                )
            )
    cut_numbers = {n for _, n in cuts}
    for name, files in sorted(by_field.items()):
        have = {n for _, n in files}
        for n in sorted(cut_numbers - have, key=lambda x: -1 if x is None else x):
            findings.append(
                SharFinding(
                    "field_missing",
                    source,
                    f"shard {n}: cuts but no {name} file (expected "
                    f"{name}.{n:06d}.tar); lhotse pairs {name} files by position, so every "
                    "later shard would get the wrong audio"
                    if n is not None
                    else f"cuts but no {name} file",
                )
            )
        for n in sorted(have - cut_numbers, key=lambda x: -1 if x is None else x):
            findings.append(
                SharFinding(
                    "field_missing",
                    source,
                    f"shard {n}: a {name} file but no cuts file (expected cuts.{n:06d}.jsonl.gz)"
                    if n is not None
                    else f"a {name} file but no cuts file",
                )
            )
    shards = []
    for number_key, (cuts_path, number) in enumerate(cuts):
        # paired by number when the names carry numbers (what the data means), else by position (lhotse)
        fields = {}
        for name, files in by_field.items():
            match = (
                [p for p, n in files if n == number]
                if number is not None
                else [files[number_key][0]]
                if number_key < len(files)
                else []
            )
            if match:
                fields[name] = match[0]
        shards.append(SharShard(number, cuts_path, fields))
    return SharLayout(source, shards, findings)


def _ranges(numbers: list[int]) -> str:
    text = ", ".join(str(n) for n in numbers[:10])
    return text + (f" and {len(numbers) - 10} more" if len(numbers) > 10 else "")


def read_shar_cuts(cuts_path: str, policy: RetryPolicy = DEFAULT_POLICY) -> list[tuple[int, dict | None]]:
    """(line number, cut dict or None for a line that is not a JSON object) of one cuts file."""
    data = read_whole(cuts_path, policy)
    if cuts_path.endswith(".gz"):
        data = gzip.decompress(data)
    out = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            item = None
        out.append((number, item if isinstance(item, dict) and isinstance(item.get("id"), str) else None))
    return out


@dataclass(frozen=True)
class SharCutAddress:
    """A Shar cut as an address: its line, and its data and metadata members in the field tar."""

    cuts_file: str
    line: int
    cut_id: str
    duration: float | None
    data: MemberAddress
    meta: MemberAddress


def match_cuts(
    shard: SharShard, lines: list[tuple[int, dict | None]], index: TarIndex, field_name: str = "recording"
) -> tuple[list[SharCutAddress], list[SharFinding]]:
    """Pair cut line i with member pair i of the field tar (lhotse's rule) and check the names."""
    tar = index.shard
    findings: list[SharFinding] = []
    names = index.names
    if len(names) % 2:
        findings.append(
            SharFinding(
                "odd_members",
                tar,
                f"{len(names)} members (expected (data, metadata) pairs); lhotse stops with 'Uneven number of files'",
            )
        )
    pairs = len(names) // 2
    if pairs != len(lines):
        findings.append(
            SharFinding(
                "count_mismatch",
                tar,
                f"{pairs} member pair(s) for {len(lines)} cut line(s) in {shard.cuts} (expected one pair per line)",
            )
        )
    out: list[SharCutAddress] = []
    for i, (number, cut) in enumerate(lines):
        if cut is None:
            findings.append(SharFinding("bad_line", shard.cuts, "not a JSON object with an 'id'", number))
            continue
        if i >= pairs:
            continue  # counted above
        data_name, meta_name = names[2 * i], names[2 * i + 1]
        stem = data_name.rpartition(".")[0] if "." in data_name.rpartition("/")[2] else data_name
        if stem != cut["id"] or meta_name.rpartition(".")[0] != stem:
            findings.append(
                SharFinding(
                    "id_mismatch",
                    tar,
                    f"member pair {i} is {data_name!r}/{meta_name!r} (expected "
                    f"{cut['id']}.<ext> and {cut['id']}.json for line {number} of {shard.cuts})",
                    number,
                    cut["id"],
                )
            )
            continue
        if data_name.endswith(".nodata"):
            findings.append(
                SharFinding(
                    "no_data", tar, f"cut {cut['id']!r} has no {field_name} (a .nodata placeholder)", number, cut["id"]
                )
            )
            continue
        duration = cut.get("duration")
        out.append(
            SharCutAddress(
                shard.cuts,
                number,
                cut["id"],
                float(duration) if duration is not None else None,
                index.address(2 * i),
                index.address(2 * i + 1),
            )
        )
    return out, findings
