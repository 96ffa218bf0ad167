"""File checks, in process: they agree with the training loader and judge the samples correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import nestkit.validate.audio as validate_audio
from nestkit.core.errors import AudioLoadError
from nestkit.data.audio import LOAD_FAILURES, read_audio
from nestkit.validate.audio import CheckSettings, FileTask, Segment, check_file
from nestkit.validate.categories import ERROR, severity
from nestkit.validate.lines import ManifestSource, scan_manifests
from nestkit.validate.validator import file_tasks
from tests.validate.validate_corpus import build_zoo, speech


@pytest.fixture(scope="module")
def zoo_entries(tmp_path_factory):
    corpus = build_zoo(tmp_path_factory.mktemp("zoo"))
    sources = [ManifestSource(m, False) for m in corpus["manifests"]] + [
        ManifestSource(n, True) for n in corpus["noise"]
    ]
    return scan_manifests(sources, 0, 0).entries


def test_the_loader_and_the_validator_agree_on_every_zoo_segment(zoo_entries):
    """read_audio refuses a segment with category C  <=>  the validator reports error C for it."""
    for task in file_tasks(zoo_entries):
        result = check_file(task, CheckSettings())
        for segment in task.segments:
            entry = zoo_entries[segment.ref]
            if entry.duration is None:
                continue
            errors = {cat for ref, cat, _ in result.findings if ref == segment.ref and severity(cat) == ERROR}
            try:
                read_audio(entry.path, entry.offset, entry.duration, 16000, require_signal=not entry.noise)
                refused = None
            except AudioLoadError as exc:
                refused = exc.category
            loader_kinds = errors & set(LOAD_FAILURES)
            if refused is None:
                assert not loader_kinds, (entry, errors)
            else:
                assert refused in errors, (entry, refused, errors)


def _one(path, duration=None, offset=0.0, noise=False, partial=False, **settings):
    task = FileTask(str(path), (Segment(0, offset, duration, partial, noise),))
    return check_file(task, CheckSettings(**settings))


def test_header_warnings_go_to_the_first_line_only(tmp_path):
    path = speech(tmp_path, "narrow.wav", 3.0, rate=8000)
    task = FileTask(path, tuple(Segment(ref, ref * 1.0, 1.0, True, False) for ref in range(3)))
    result = check_file(task, CheckSettings())
    assert result.findings and {ref for ref, _, _ in result.findings} == {0}
    assert [cat for _, cat, _ in result.findings] == ["needs_resampling"]


def test_long_files_are_decoded_in_blocks_and_nan_is_located(tmp_path, monkeypatch):
    data = np.full(10 * 16000, 0.1, np.float32) * np.sin(np.arange(10 * 16000, dtype=np.float32))
    data[7 * 16000 + 5] = np.nan
    sf.write(tmp_path / "long.wav", data, 16000, subtype="FLOAT")
    monkeypatch.setattr(validate_audio, "DECODE_BLOCK_FRAMES", 16000)
    result = _one(tmp_path / "long.wav", 10.0)
    [(_, category, reason)] = result.findings
    assert category == "nan_inf" and "got the first at 7.000 s" in reason


def test_segment_checks_only_look_at_the_segment(tmp_path):
    data = np.concatenate([np.zeros(16000, np.float32), 0.3 * np.sin(np.arange(16000, dtype=np.float32) / 5)])
    sf.write(tmp_path / "half_silent.wav", data, 16000)
    assert [c for _, c, _ in _one(tmp_path / "half_silent.wav", 1.0, partial=True).findings] == ["all_zero"]
    assert _one(tmp_path / "half_silent.wav", 1.0, offset=1.0, partial=True).findings == []


def test_clipping_thresholds_are_options(tmp_path):
    data = 0.5 * np.sin(np.arange(32000, dtype=np.float32) / 7)
    data[:100] = 1.0  # 100 of 32000 samples, about 0.3%
    sf.write(tmp_path / "clip.wav", data, 16000, subtype="FLOAT")
    assert [c for _, c, _ in _one(tmp_path / "clip.wav", 2.0).findings] == ["clipping"]
    assert _one(tmp_path / "clip.wav", 2.0, clip_fraction=0.01).findings == []


def test_noise_silence_threshold(tmp_path):
    rng = np.random.default_rng(0)
    quiet = (10 ** (-70 / 20)) * rng.standard_normal(32000).astype(np.float32)  # about -70 dBFS RMS
    sf.write(tmp_path / "quiet.wav", quiet, 16000, subtype="FLOAT")
    assert _one(tmp_path / "quiet.wav", 2.0, noise=True).findings == []
    [(_, category, reason)] = _one(tmp_path / "quiet.wav", 2.0, noise=True, noise_silence_db=-60).findings
    assert category == "silent_noise" and "expected RMS above -60 dBFS, got -70." in reason
    assert _one(tmp_path / "quiet.wav", 2.0).findings == []  # quiet speech is not judged by the noise rule


def test_no_decode_reads_no_samples(tmp_path):
    sf.write(tmp_path / "zeros.wav", np.zeros(16000, np.float32), 16000)
    assert _one(tmp_path / "zeros.wav", 1.0, decode=False).findings == []
    assert [c for _, c, _ in _one(tmp_path / "zeros.wav", 1.0).findings] == ["all_zero"]


def test_measured_frames_for_durations(tmp_path):
    path = speech(tmp_path, "a.wav", 2.5)
    result = _one(path, None)
    assert (result.sample_rate, result.frames, result.findings) == (16000, 40000, [])


def test_the_channel_a_cut_names_is_the_one_judged(tmp_path):
    speech_channel = 0.3 * np.sin(np.arange(32000, dtype=np.float32) / 5)
    stereo = np.stack([speech_channel, np.zeros(32000, np.float32)], axis=1)
    sf.write(tmp_path / "stereo.wav", stereo, 16000)

    def judged(channel):
        task = FileTask(str(tmp_path / "stereo.wav"), (Segment(0, 0.0, 2.0, True, False, channel),))
        return [c for _, c, _ in check_file(task, CheckSettings()).findings]

    assert judged(None) == ["needs_downmix"]  # the average has sound
    assert judged(0) == ["needs_downmix"]
    assert judged(1) == ["needs_downmix", "all_zero"]
    assert judged(2) == ["needs_downmix", "not_audio"]  # read_audio refuses a channel that is not there
    with pytest.raises(AudioLoadError) as refused:
        read_audio(str(tmp_path / "stereo.wav"), 0.0, 2.0, 16000, channel=2)
    assert refused.value.category == "not_audio"


def test_one_set_of_sample_rules_for_the_loader_and_the_validator(tmp_path, monkeypatch):
    """The rules live in nestkit.data.sample_rules: change a threshold there and both change with it."""
    import nestkit.data.sample_rules as rules

    loud = 0.9 * np.sin(np.arange(32000, dtype=np.float32) / 7)
    quiet = np.full(32000, 0.2, np.float32) + 1e-3 * np.sin(np.arange(32000, dtype=np.float32))
    sf.write(tmp_path / "loud.wav", loud, 16000, subtype="FLOAT")
    sf.write(tmp_path / "quiet.wav", quiet, 16000, subtype="FLOAT")

    def verdicts() -> tuple[set, set]:
        loader, validator = set(), set()
        for name in ("loud", "quiet"):
            path = str(tmp_path / f"{name}.wav")
            try:
                read_audio(path, 0.0, 2.0, 16000, require_signal=True)
            except AudioLoadError as exc:
                loader.add((name, exc.category))
            validator |= {(name, c) for _, c, _ in _one(path, 2.0).findings if severity(c) == ERROR}
        return loader, validator

    assert verdicts() == (set(), set())
    monkeypatch.setattr(rules, "MAX_ABS_SAMPLE", 0.5)
    monkeypatch.setattr(rules, "DC_PEAK_TO_PEAK", 0.01)
    loader, validator = verdicts()
    assert loader == validator == {("loud", "out_of_range"), ("quiet", "dc_only")}


def test_a_file_object_reads_like_its_path_on_every_zoo_file(zoo_entries):
    """read_audio_from (a tar member's bytes) applies the same rules as read_audio: same samples or the
    same category and problem, for every regular file of the zoo."""
    import io
    import os
    import stat

    from nestkit.data.audio import read_audio_from

    compared = 0
    for entry in zoo_entries:
        try:
            regular = stat.S_ISREG(os.stat(entry.path).st_mode) and os.access(entry.path, os.R_OK)
        except OSError:
            regular = False
        if not regular or entry.duration is None:
            continue
        args = (entry.offset, entry.duration, 16000, entry.channel, not entry.noise)
        by_path = _outcome(read_audio, entry.path, *args)
        by_object = _outcome(read_audio_from, io.BytesIO(Path(entry.path).read_bytes()), entry.path, *args)
        if isinstance(by_path, tuple):
            assert by_object == by_path, entry
        else:
            assert np.array_equal(by_object, by_path), entry
        compared += 1
    assert compared >= 20


def _outcome(read, *args):
    try:
        return read(*args)
    except AudioLoadError as exc:
        return exc.category, str(exc)
