"""Real sharded corpora for the validate-manifest shard tests, with corruptions planted the way they happen.

Shar is written by lhotse 1.33's own `CutSet.to_shar`, NeMo's tarred layout by nestkit's writer (NeMo's
converter's layout: `audio_K.tar`, `tarred_audio_manifest.json` with `shard_id`); then tars are cut short,
members deleted, duplicated, replaced by bytes that are not audio or by float WAVs holding NaN, headers
damaged, lines given the wrong shard_id. Every builder returns what the validator must find, as
(manifest, line, category) triples.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

from nestkit.data.shards.write import write_nemo_tarred
from tests.data.shards.corpus import lhotse_shar, make_tar, make_wavs, tone

SECONDS = 1.2  # every utterance: above validate-manifest's default --min-duration of 1 s


def wavs(folder: Path, n: int, rate: int = 16000) -> list[str]:
    return make_wavs(folder, n, seconds=SECONDS, sample_rate=rate)


def members(tar: str) -> list[tuple[str, bytes]]:
    with tarfile.open(tar) as t:
        return [(m.name, t.extractfile(m).read()) for m in t.getmembers()]


def rewrite(tar: str, new_members: list[tuple[str, bytes]]) -> None:
    os.remove(tar)
    make_tar(Path(tar), new_members)


def cut_inside(tar: str, member: str, into: int = 10) -> None:
    """Truncate `tar` `into` bytes into the data of `member` (an interrupted copy)."""
    with tarfile.open(tar) as t:
        offset = t.getmember(member).offset_data
    with open(tar, "r+b") as f:
        f.truncate(offset + into)


def drop_end_blocks(tar: str) -> None:
    """Cut the tar right after its last member's data: no end-of-archive blocks (cut at a boundary)."""
    with tarfile.open(tar) as t:
        last = t.getmembers()[-1]
    with open(tar, "r+b") as f:
        f.truncate(last.offset_data + (last.size + 511) // 512 * 512)


def damage_header(tar: str, member: str) -> None:
    """Overwrite a byte of a member's header name field: its checksum no longer matches."""
    with tarfile.open(tar) as t:
        offset = t.getmember(member).offset
    with open(tar, "r+b") as f:
        f.seek(offset + 2)
        f.write(b"#")


def nan_wav() -> bytes:
    data = tone(SECONDS, 9).copy()
    data[4000] = np.nan
    buf = io.BytesIO()
    sf.write(buf, data, 16000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


NOT_AUDIO = b"this member is a text file, not audio\n" * 40


def clean_shar(folder: Path, n: int = 6, shard_size: int = 3, rate: int = 16000) -> str:
    lhotse_shar(folder / "shar", wavs(folder / "wav", n, rate), shard_size=shard_size)
    return str(folder / "shar")


def clean_nemo(folder: Path, n: int = 6, shard_size: int = 3) -> tuple[str, str]:
    """(tarred manifest, tar pattern) of a NeMo tarred dataset written like NeMo's converter writes it."""
    paths = wavs(folder / "wav", n)
    manifest = folder / "train.json"
    manifest.write_text("".join(json.dumps({"audio_filepath": p, "duration": SECONDS}) + "\n" for p in paths))
    write_nemo_tarred(str(manifest), str(folder / "nemo"), shard_size=shard_size, progress=False)
    return str(folder / "nemo" / "tarred_audio_manifest.json"), str(folder / "nemo" / "audio__OP_0..1_CL_.tar")


def broken_shar(folder: Path) -> tuple[str, set[tuple[str, int, str]]]:
    """Three Shar shards of three cuts from lhotse's writer, then damaged:

    shard 0: cut short inside utt002's metadata member; shard 1: utt004's pair deleted, utt005's audio
    replaced by text; shard 2: utt006's pair appended again, a stray pair no cut names, utt008 stored as
    lhotse's `.nodata` placeholder, and the end-of-archive blocks cut off.
    """
    root = folder / "shar"
    lhotse_shar(root, wavs(folder / "wav", 9), shard_size=3)
    cuts = [str(root / f"cuts.{k:06d}.jsonl.gz") for k in range(3)]
    tars = [str(root / f"recording.{k:06d}.tar") for k in range(3)]
    cut_inside(tars[0], "utt002.json")
    one = [(n, b) for n, b in members(tars[1]) if not n.startswith("utt004.")]
    rewrite(tars[1], [(n, NOT_AUDIO if n == "utt005.flac" else b) for n, b in one])
    two = members(tars[2])
    two = [
        (
            n.replace("utt008.flac", "utt008.nodata").replace("utt008.json", "utt008.nometa"),
            b"" if n.startswith("utt008.") else b,
        )
        for n, b in two
    ]
    rewrite(tars[2], two + two[:2] + [("stray.flac", two[2][1]), ("stray.json", two[3][1])])
    drop_end_blocks(tars[2])
    expect = {
        (tars[0], 0, "truncated_shard"),
        (tars[0], 0, "odd_members"),
        (tars[0], 0, "count_mismatch"),
        (cuts[1], 2, "member_missing"),
        (cuts[1], 2, "id_mismatch"),
        (tars[1], 0, "count_mismatch"),
        (cuts[1], 3, "not_audio"),
        (tars[2], 0, "duplicate_member"),
        (tars[2], 0, "not_in_manifest"),
        (tars[2], 0, "count_mismatch"),
        (tars[2], 0, "unterminated_shard"),
        (cuts[2], 3, "no_data"),
    }
    return str(root), expect


def broken_shar_layouts(folder: Path) -> tuple[list[str], set[tuple[str, int, str]]]:
    """Shar directories lhotse cannot pair: a numbering gap, a shard without its audio, a stray file;
    and a folder that is no Shar directory at all."""
    gappy = folder / "gappy"
    lhotse_shar(gappy, wavs(folder / "wav", 9), shard_size=3)
    for name in ("cuts.000001.jsonl.gz", "recording.000001.tar"):
        os.rename(gappy / name, gappy / name.replace("000001", "000003"))
    os.remove(gappy / "recording.000000.tar")
    (gappy / "notes.txt").write_text("copied by hand\n")
    empty = folder / "not_shar"
    empty.mkdir()
    expect = {
        (str(gappy), 0, "shard_gap"),
        (str(gappy), 0, "field_missing"),
        (str(gappy / "notes.txt"), 0, "foreign_file"),
        (str(empty), 0, "not_shar"),
    }
    return [str(gappy), str(empty)], expect


def broken_nemo(folder: Path) -> tuple[str, str, set[tuple[str, int, str]]]:
    """A NeMo tarred dataset of three shards (nine lines), then damaged:

    audio_0: a member deleted, one replaced by a float WAV holding NaN, one by text, a stray member and a
    directory added; audio_1: a header damaged (the members after it cannot be located); audio_2: a
    member added twice. Lines: one moved to shard 0 while its member is in shard 2, one without shard_id,
    one with shard_id 7, one that is not JSON, one with a duration that is not a number. The tar pattern
    also names `extra.tar` (no shard id in its name) and a tar that does not exist.
    """
    paths = wavs(folder / "wav", 9)
    source = folder / "train.json"
    source.write_text("".join(json.dumps({"audio_filepath": p, "duration": SECONDS}) + "\n" for p in paths))
    nemo = folder / "nemo"
    write_nemo_tarred(str(source), str(nemo), shard_size=3, progress=False)
    tars = [str(nemo / f"audio_{k}.tar") for k in range(3)]
    manifest = str(nemo / "tarred_audio_manifest.json")
    lines = [json.loads(x) for x in Path(manifest).read_text().splitlines()]
    names = [line["audio_filepath"] for line in lines]

    zero = members(tars[0])
    replaced = {names[1]: nan_wav(), names[2]: NOT_AUDIO}
    zero = [(n, replaced.get(n, b)) for n, b in zero if n != names[0]]
    rewrite(tars[0], zero + [("README.txt", b"shard 0\n")])
    with tarfile.open(tars[0], "a") as t:
        t.addfile(_directory("a_folder"))
    damage_header(tars[1], names[4])
    two = members(tars[2])
    rewrite(tars[2], two + [two[0]])
    make_tar(nemo / "extra.tar", [("unrelated.wav", members(tars[2])[1][1])])

    lines[8]["shard_id"] = 0  # its member is in audio_2.tar
    del lines[5]["shard_id"]
    lines[3]["shard_id"] = 7
    lines[6]["duration"] = "long"
    text = [json.dumps(x) for x in lines]
    text.insert(7, '{"audio_filepath": "x.wav", "duration": 1.2,')  # line 8: not JSON; later lines move down
    Path(manifest).write_text("\n".join(text) + "\n")
    pattern = str(nemo / "{audio_0,audio_1,audio_2,extra,audio_9}.tar")
    expect = {
        (manifest, 1, "member_missing"),
        (manifest, 2, "nan_inf"),
        (manifest, 3, "not_audio"),
        (tars[0], 0, "not_in_manifest"),
        (tars[0], 0, "not_regular_member"),
        (tars[1], 0, "corrupt_shard"),
        (manifest, 5, "member_missing"),  # after the damaged header: cannot be located
        (tars[2], 0, "duplicate_member"),
        (manifest, 10, "shard_id_mismatch"),
        (manifest, 6, "missing_shard_id"),
        (manifest, 4, "lines_without_shard"),
        (manifest, 8, "malformed_json"),
        (manifest, 7, "invalid_duration"),
        (str(nemo / "extra.tar"), 0, "unknown_shard_id"),
        (str(nemo / "extra.tar"), 0, "shard_without_lines"),
        (str(nemo / "audio_9.tar"), 0, "missing"),
    }
    return manifest, pattern, expect


def _directory(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info
