"""Line checks agree with the trainer's parsers: a line training refuses is an error finding."""

from __future__ import annotations

import os

import pytest

from nestkit.core.errors import ManifestError
from nestkit.data.manifest import CutIndex, decode_line, lhotse_cut, nemo_entry
from nestkit.validate.categories import ERROR
from nestkit.validate.lines import ManifestSource, scan_manifests
from tests.validate.validate_corpus import nemo, speech, write_jsonl

LINES = [
    nemo("a.wav", 2.0),
    nemo("a.wav", 2.0, offset=0.5),
    {"audio_filename": "a.wav", "duration": 1.5},  # NeMo's other path key
    nemo("a.wav", 0.0),
    nemo("a.wav", -2.0),
    nemo("a.wav", None),
    nemo("a.wav", True),
    nemo("a.wav", "2.0"),
    '{"audio_filepath": "a.wav", "duration": Infinity}',
    '{"audio_filepath": "a.wav", "duration": 2.0, "offset": NaN}',
    '{"audio_filepath": "a.wav", "duration": 2.0, "snr": NaN}',
    nemo("a.wav", 2.0, offset=-0.1),
    nemo("a.wav", 2.0, offset="0"),
    nemo("", 2.0),
    nemo(["a.wav"], 2.0),
    {"duration": 2.0},
    "[1, 2]",
    "{broken",
    '"a string"',
]


def _trainer_accepts(raw: str, manifest: str, line: int) -> bool:
    try:
        nemo_entry(decode_line(raw, manifest, line), manifest, line)
        return True
    except ManifestError:
        return False


def test_a_line_the_trainer_refuses_is_an_error_and_only_then(tmp_path):
    manifest = write_jsonl(tmp_path / "m.json", LINES)
    raws = (tmp_path / "m.json").read_text().splitlines()
    scan = scan_manifests([ManifestSource(manifest, False)], min_duration_s=0, max_duration_s=0)
    errors = {f.line for f in scan.findings if f.severity == ERROR}
    for number, raw in enumerate(raws, start=1):
        assert (number not in errors) == _trainer_accepts(raw, manifest, number), (number, raw)


def test_categories_name_the_field_the_trainer_refused(tmp_path):
    manifest = write_jsonl(tmp_path / "m.json", LINES)
    scan = scan_manifests([ManifestSource(manifest, False)], min_duration_s=0, max_duration_s=0)
    by_line = {f.line: f.category for f in scan.findings}
    assert by_line == {
        4: "invalid_duration",
        5: "invalid_duration",
        6: "missing_field",
        7: "invalid_duration",
        8: "invalid_duration",
        9: "invalid_duration",
        10: "invalid_offset",
        11: "malformed_json",
        12: "invalid_offset",
        13: "invalid_offset",
        14: "invalid_field",
        15: "invalid_field",
        16: "missing_field",
        17: "malformed_json",
        18: "malformed_json",
        19: "malformed_json",
    }
    nan_elsewhere = [f for f in scan.findings if f.line == 11][0]
    assert "NaN/Infinity in snr" in nan_elsewhere.reason


def test_lines_with_only_a_bad_duration_are_still_checked_and_measured(tmp_path):
    manifest = write_jsonl(
        tmp_path / "m.json", [nemo("a.wav", -1), nemo("a.wav", 1.0, offset=-1), {"audio_filepath": "a.wav"}]
    )
    scan = scan_manifests([ManifestSource(manifest, False)], 0, 0)
    assert [(e.line, e.duration) for e in scan.entries] == [
        (1, None),
        (3, None),
    ]  # line 2's offset is unknown


def test_agrees_with_the_trainer_index_on_a_valid_manifest(tmp_path):
    files = [speech(tmp_path, f"u{i}.wav", 1.5, seed=i) for i in range(3)]
    manifest = write_jsonl(tmp_path / "m.json", [nemo(f, 1.5) for f in files] + ["", nemo(files[0], 1.0, offset=0.25)])
    scan = scan_manifests([ManifestSource(manifest, False)], 1.0, 60.0)
    index = CutIndex.build(manifest)
    assert [(e.line, e.path, e.offset, e.duration) for e in scan.entries] == [
        (
            int(index.line[i]),
            index.cut(i).recording.sources[0].source,
            index.cut(i).start,
            index.cut(i).duration,
        )
        for i in range(len(index))
    ]
    assert [f.category for f in scan.findings] == ["blank_line"]


def test_duplicates_cross_manifests_but_not_roles(tmp_path):
    a = write_jsonl(tmp_path / "a.json", [nemo("x.wav", 2.0)])
    sub = tmp_path / "sub"
    sub.mkdir()
    b = write_jsonl(sub / "b.json", [nemo("../x.wav", 2.0), nemo("../x.wav", 2.0, offset=0.0)])
    noise = write_jsonl(tmp_path / "n.json", [nemo("x.wav", 2.0)])
    scan = scan_manifests([ManifestSource(a, False), ManifestSource(b, False), ManifestSource(noise, True)], 0, 0)
    duplicates = [(f.manifest, f.line) for f in scan.findings if f.category == "duplicate"]
    assert duplicates == [(b, 1), (b, 2)]  # same resolved file and segment; the noise use is not a duplicate
    assert "a.json:1" in [f for f in scan.findings if f.category == "duplicate"][0].reason


@pytest.mark.parametrize(
    "minimum, maximum, expected",
    [(1.0, 60.0, []), (2.5, 60.0, ["too_short"]), (0.0, 1.5, ["too_long"]), (0.0, 0.0, [])],
)
def test_duration_limits(tmp_path, minimum, maximum, expected):
    manifest = write_jsonl(tmp_path / "m.json", [nemo("x.wav", 2.0)])
    scan = scan_manifests([ManifestSource(manifest, False)], minimum, maximum)
    assert [f.category for f in scan.findings] == expected


def test_lhotse_cuts_are_read_as_training_reads_them(tmp_path):
    from lhotse import CutSet, Recording

    first = Recording.from_file(speech(tmp_path, "a.wav", 2.0, seed=1)).to_cut()
    second = Recording.from_file(speech(tmp_path, "b.wav", 2.0, seed=2)).to_cut()
    faster = second.perturb_speed(1.1)  # a recording transform: training lets lhotse load it
    mixed = first.mix(second, offset_other_by=0.5)  # serialized without a top-level duration
    cuts = CutSet.from_cuts([first, faster, mixed])
    manifest = write_jsonl(tmp_path / "cuts.jsonl", [c.to_dict() for c in cuts])
    scan = scan_manifests([ManifestSource(manifest, False)], 0, 0)
    assert [(f.line, f.category) for f in scan.findings] == [(2, "not_checked"), (3, "missing_field")]
    assert "MonoCut with 1 local file(s) and transforms" in scan.findings[0].reason
    assert [(e.line, os.path.basename(e.path)) for e in scan.entries] == [(1, "a.wav"), (2, "b.wav")]
    raws = (tmp_path / "cuts.jsonl").read_text().splitlines()
    with pytest.raises(ManifestError):  # the trainer refuses line 3 too
        lhotse_cut(decode_line(raws[2], manifest, 3), manifest, 3)
