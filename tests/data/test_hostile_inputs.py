"""Hostile files and lines found by red-teaming validate-manifest and the pipeline: each one gets the
right category (the same word in validate-manifest and in training's quarantine), and none of them
crashes a command, corrupts a report or poisons a batch."""

from __future__ import annotations

import gzip
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import soundfile as sf

from nestkit.core.errors import AudioLoadError, ManifestError
from nestkit.data.audio import check_path, read_audio
from nestkit.data.loading import load_cut
from nestkit.data.manifest import CutIndex, lhotse_cut
from nestkit.data.pipeline import build_pipeline
from nestkit.data.synthetic import speech_like
from nestkit.runfolder.quarantine import read_quarantine
from tests.helpers import data_config, manifest_of, write_speech
from tests.validate.validate_corpus import found, nemo, run_cli, run_json, speech, write_jsonl


def _category(path: str, **kw) -> str | None:
    try:
        read_audio(path, **kw)
    except AudioLoadError as exc:
        return exc.category
    return None


# ------------------------------------------------------------------------------------------------
# files


def test_a_gsm610_wav_is_valid_although_libsndfile_cannot_seek_in_it(tmp_path):
    path = tmp_path / "gsm.wav"
    sf.write(str(path), speech_like(3.0, 1), 16000, format="WAV", subtype="GSM610")
    assert not sf.SoundFile(str(path)).seekable()
    manifest = write_jsonl(tmp_path / "m.json", [nemo(str(path), 3.0), nemo(str(path), 1.0, offset=1.5)])
    done, report = run_json(manifest)
    assert done.returncode == 0 and report["findings"] == [], report["findings"]
    # training reads a segment of it too (frames before the offset are decoded and dropped)
    whole = read_audio(str(path))
    part = read_audio(str(path), offset=1.5, duration=1.0)
    assert np.array_equal(part, whole[24000:40000])


def test_paths_no_file_can_be_at_are_missing(tmp_path):
    ok = speech(tmp_path, "ok.wav", 1.5)
    through_a_file = ok + "/inner.wav"  # ENOTDIR
    too_long = "/" + "x" * 5000 + ".wav"  # ENAMETOOLONG
    for path in (through_a_file, too_long):
        with pytest.raises(AudioLoadError) as caught:
            check_path(path)
        assert caught.value.category == "missing"
    manifest = write_jsonl(tmp_path / "m.json", [nemo(through_a_file, 1.5), nemo(too_long, 1.5)])
    _, report = run_json(manifest)
    assert found(report) == {(manifest, 1): {"missing"}, (manifest, 2): {"missing"}}


def test_a_zero_byte_file_is_empty_for_the_validator_and_the_loader(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    assert _category(str(tmp_path / "zero.wav")) == "empty"
    manifest = write_jsonl(tmp_path / "m.json", [nemo("zero.wav", 2.0)])
    _, report = run_json(manifest)
    [finding] = report["findings"]
    assert finding["category"] == "empty" and "0 bytes" in finding["reason"]


def test_a_path_with_a_nul_character_is_an_invalid_field_everywhere(tmp_path):
    ok = speech(tmp_path, "ok.wav", 1.5)
    manifest = write_jsonl(tmp_path / "m.json", [nemo(ok, 1.5), {"audio_filepath": "a\u0000b.wav", "duration": 1.5}])
    done, report = run_json(manifest)
    assert done.returncode == 1
    assert found(report) == {(manifest, 2): {"invalid_field"}}
    assert "NUL" in report["findings"][0]["reason"] and "\x00" not in report["findings"][0]["reason"]
    with pytest.raises(ManifestError, match=r"m.json:2: invalid audio_filepath .*NUL"):
        CutIndex.build(manifest)  # training refuses the manifest up front, not a worker mid-epoch
    with pytest.raises(AudioLoadError) as caught:
        check_path("a\x00b.wav")
    assert caught.value.category == "missing"


def test_a_one_sample_file_is_too_short_not_a_constant(tmp_path):
    sf.write(str(tmp_path / "one.wav"), np.array([0.1], np.float32), 16000)
    manifest = write_jsonl(tmp_path / "m.json", [nemo("one.wav", 1 / 16000)])
    done, report = run_json(manifest)
    assert done.returncode == 0 and found(report) == {(manifest, 1): {"too_short"}}


def test_float_samples_far_beyond_full_scale_are_out_of_range(tmp_path):
    huge = speech_like(2.0, 3) * 1e30
    sf.write(str(tmp_path / "huge.wav"), huge, 16000, subtype="FLOAT")
    sf.write(str(tmp_path / "int_scaled.wav"), speech_like(2.0, 4) * 32768, 16000, subtype="FLOAT")
    manifest = write_jsonl(tmp_path / "m.json", [nemo("huge.wav", 2.0), nemo("int_scaled.wav", 2.0)])
    _, report = run_json(manifest)
    # integer-scaled floats are only loud (clipping warning); 1e30 overflows every energy
    assert found(report) == {(manifest, 1): {"out_of_range"}, (manifest, 2): {"clipping"}}
    assert _category(str(tmp_path / "huge.wav")) == "out_of_range"
    assert _category(str(tmp_path / "int_scaled.wav")) is None


def test_a_cut_naming_a_channel_a_mono_file_lacks_is_refused_by_both(tmp_path):
    from lhotse import Recording

    cut = Recording.from_file(speech(tmp_path, "mono.wav", 2.0)).to_cut().to_dict()
    cut["id"], cut["channel"] = "chan3", 3
    cut["recording"]["channel_ids"] = cut["recording"]["sources"][0]["channels"] = [0, 1, 2, 3]
    manifest = write_jsonl(tmp_path / "cuts.jsonl", [cut])
    _, report = run_json(manifest)
    assert found(report) == {(manifest, 1): {"not_audio"}}
    with pytest.raises(AudioLoadError) as caught:
        load_cut(lhotse_cut(cut, manifest, 1), 16000, None)
    assert caught.value.category == "not_audio"


def test_cuts_of_different_channels_of_one_file_are_not_duplicates(tmp_path):
    from lhotse import Recording

    stereo = np.stack([speech_like(2.0, 5), speech_like(2.0, 6)], axis=1)
    sf.write(str(tmp_path / "stereo.wav"), stereo, 16000)
    whole = Recording.from_file(str(tmp_path / "stereo.wav")).to_cut()
    left, right = whole.to_mono()
    lines = [left.to_dict(), right.to_dict(), whole.to_dict(), dict(right.to_dict(), id="right-again")]
    manifest = write_jsonl(tmp_path / "cuts.jsonl", lines)
    _, report = run_json(manifest)
    duplicates = {f["line"] for f in report["findings"] if f["category"] == "duplicate"}
    assert duplicates == {4}


# ------------------------------------------------------------------------------------------------
# manifests


def test_lines_nested_too_deep_or_not_objects_are_malformed_and_repairs_go_on(tmp_path):
    ok = speech(tmp_path, "ok.wav", 2.0)
    lines = [nemo(ok, 1.7), "[" * 3000 + "]" * 3000, "[1, 2]", "null", '"text"']
    manifest = write_jsonl(tmp_path / "m.json", lines)
    done, report = run_json(manifest, "--fix-durations", str(tmp_path / "fixed.json"))
    assert done.returncode == 1
    assert found(report) == {(manifest, n): {"malformed_json"} for n in range(2, 6)} | {
        (manifest, 1): {"duration_mismatch"}
    }
    reasons = {f["line"]: f["reason"] for f in report["findings"]}
    assert "got a JSON array" in reasons[3] and "got a JSON null" in reasons[4]
    fixed = (tmp_path / "fixed.json").read_text().splitlines()
    assert json.loads(fixed[0])["duration"] == 2.0 and fixed[1:] == (tmp_path / "m.json").read_text().splitlines()[1:]


@pytest.mark.parametrize(
    "data, named",
    [
        (b"\xef\xbb\xbf" + json.dumps(nemo("a.wav", 1.0)).encode(), "byte order mark"),
        (("\ufeff" + json.dumps(nemo("a.wav", 1.0))).encode("utf-16-le"), "UTF-16"),
        (json.dumps(nemo("a.wav", 1.0, text="x")).encode().replace(b'"x"', b'"\xe9t\xe9"'), "not UTF-8 at byte"),
    ],
    ids=["utf8-bom", "utf16", "latin1"],
)
def test_encoding_problems_are_named(tmp_path, data, named):
    (tmp_path / "m.json").write_bytes(data + b"\n")
    _, report = run_json(str(tmp_path / "m.json"))
    assert [f["category"] for f in report["findings"] if f["line"] == 1] == ["malformed_json"]
    assert named in report["findings"][0]["reason"]
    with pytest.raises(ManifestError, match=named):
        CutIndex.build(str(tmp_path / "m.json"))


def test_a_manifest_that_is_not_gzip_is_one_finding_and_no_traceback_in_training(tmp_path):
    ok = speech(tmp_path, "ok.wav", 2.0)
    fake = tmp_path / "cuts.jsonl.gz"
    fake.write_text(json.dumps(nemo(ok, 2.0)) + "\n")  # plain text under a .gz name
    _, report = run_json(str(fake))
    assert [f["category"] for f in report["findings"]] == ["manifest_corrupt"]  # not also empty_manifest
    whole = gzip.compress((json.dumps(nemo(ok, 2.0)) + "\n").encode() * 200)
    cut_short = tmp_path / "short.jsonl.gz"
    cut_short.write_bytes(whole[: len(whole) // 2])
    for path in (fake, cut_short):
        with pytest.raises(ManifestError, match="cannot be read to its end"):
            CutIndex.build(str(path))


def test_control_characters_in_paths_keep_every_report_format_parseable(tmp_path):
    lines = [nemo(str(tmp_path / "new\nline.wav"), 2.0), nemo(str(tmp_path / "esc\x1b[31m.wav"), 2.0)]
    manifest = write_jsonl(tmp_path / "m.json", lines)
    table = run_cli(manifest)
    assert table.returncode == 1
    rows = table.stdout.splitlines()
    assert len(rows) == 3 and all(r.split(":")[0].endswith("m.json") for r in rows[:2]), rows
    assert "new\\nline.wav" in rows[0] and "\x1b" not in table.stdout
    github = run_cli(manifest, "--format", "github")
    assert [r[:8] for r in github.stdout.splitlines()[:2]] == ["::error "] * 2
    assert not any(ord(c) < 32 and c != "\n" for c in github.stdout)
    junit = run_cli(manifest, "--format", "junit", "--output", str(tmp_path / "r.xml"))
    assert junit.returncode == 1
    root = ET.parse(tmp_path / "r.xml").getroot()
    assert root.get("failures") == "2"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_outputs_that_cannot_be_written_are_usage_errors_not_tracebacks(tmp_path):
    manifest = write_jsonl(tmp_path / "m.json", [nemo(speech(tmp_path, "ok.wav", 2.0), 2.0)])
    for args in (
        ["-o", "/dev/full"],
        ["--write-clean", "/dev/full"],
        ["--fix-durations", "/dev/full"],
        ["--write-clean", manifest + "/clean.json"],
        ["-o", str(tmp_path)],
    ):
        done = run_cli(manifest, *args)  # in process: a traceback would fail the test here
        assert done.returncode == 2, (args, done.stderr)
        assert args[1] in done.stderr and ("cannot be" in done.stderr or "is a folder" in done.stderr)


# ------------------------------------------------------------------------------------------------
# the training pipeline


def test_utterances_with_nothing_to_learn_or_huge_samples_are_substituted(tmp_path):
    bad = {
        "all_zero": np.zeros(24000, np.float32),
        "dc_only": np.full(24000, 0.3, np.float32),
        "out_of_range": speech_like(1.5, 7) * 1e30,
    }
    entries = []
    for name, data in bad.items():
        sf.write(str(tmp_path / f"{name}.wav"), data, 16000, subtype="FLOAT")
        entries.append((str(tmp_path / f"{name}.wav"), 1.5))
    entries += [(write_speech(tmp_path / f"good{i}.wav", 1.5, seed=i), 1.5) for i in range(5)]
    manifest = manifest_of(tmp_path / "train.json", entries)
    run_dir = tmp_path / "run"
    cfg = data_config(
        manifest, None, batch_size=4, shuffle=False, drop_last=False, batch_augmentor={"prob": 1.0, "noise_ratio": 0.0}
    )  # speech mixing: rows mix each other
    pipeline = build_pipeline(cfg, run_dir=run_dir)
    batch = pipeline.batch(0)
    assert bool(batch.audio.isfinite().all()) and bool(batch.noisy_audio.isfinite().all())
    first = {r["line"]: r for r in reversed(read_quarantine(run_dir))}
    for line, category in enumerate(bad, start=1):
        record = first[line]
        assert record["category"] == category and record["manifest"] == manifest
        assert record["path"] == entries[line - 1][0] and record["reason"] and record["substitute"]
    assert batch.records[3]["substitute_for"] is None  # the good one in slot 4 is used as it is
    # the validator calls the same lines errors of the same categories
    _, report = run_json(manifest)
    assert found(report) == {(manifest, n): {c} for n, c in enumerate(bad, start=1)}


def test_a_cut_that_is_not_a_file_is_named_by_its_url_or_command():
    from lhotse import AudioSource, MonoCut, Recording

    from nestkit.data.loading import cut_path

    for kind, source in (("url", "https://example.com/a.wav"), ("command", "sox in.flac -t wav -")):
        recording = Recording(
            id="rec",
            sources=[AudioSource(type=kind, channels=[0], source=source)],
            sampling_rate=16000,
            num_samples=16000,
            duration=1.0,
        )
        assert cut_path(MonoCut(id="c", start=0, duration=1.0, channel=0, recording=recording)) == source
