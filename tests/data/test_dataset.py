"""The NEST dataset on real generated audio: determinism, augmentation numerics, bad data."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from nestkit.data.augment import achieved_ratio_db
from nestkit.data.manifest import CutIndex
from nestkit.data.pipeline import build_pipeline
from nestkit.data.sample_rules import downmix
from nestkit.data.silent_noise import SilenceMemo
from nestkit.data.synthetic import noise_like, silent_noises, write_wav
from nestkit.runfolder.quarantine import read_quarantine
from tests.helpers import data_config, manifest_of, read_jsonl, write_noise, write_speech

ALWAYS_NOISE = {"prob": 1.0, "noise_ratio": 1.0}
ALWAYS_SPEECH = {"prob": 1.0, "noise_ratio": 0.0}


def batch_signature(batch) -> tuple:
    return (batch.fingerprint, batch.cut_ids, batch.audio.numpy().tobytes(), batch.noisy_audio.numpy().tobytes())


def test_batches_are_identical_across_worker_counts_and_processes(corpus, tmp_path):
    cfg = data_config(corpus["train"], corpus["noise"], batch_size=4)
    pipeline = build_pipeline(cfg)
    pipeline.sampler.set_epoch(1)
    in_process = [batch_signature(pipeline.batch(n)) for n in range(len(pipeline.sampler))]
    for workers in (1, 4):
        pipeline.sampler.set_epoch(1)
        loader = pipeline.dataloader(num_workers=workers)
        assert [batch_signature(b) for b in loader] == in_process, f"{workers} workers"
    # and in a fresh interpreter
    script = (
        "import sys, json; from tests.helpers import data_config; from nestkit.data.pipeline import build_pipeline\n"
        f"p = build_pipeline(data_config({corpus['train']!r}, {corpus['noise']!r}, batch_size=4))\n"
        "print(json.dumps([p.batch(n, epoch=1).fingerprint for n in range(len(p.sampler))]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2]
    )
    assert json.loads(out.stdout) == [s[0] for s in in_process]


def test_epochs_and_seeds_change_the_batches(corpus):
    a = build_pipeline(data_config(corpus["train"], corpus["noise"]))
    assert a.batch(0, epoch=0).fingerprint != a.batch(0, epoch=1).fingerprint
    cfg = data_config(corpus["train"], corpus["noise"])
    cfg.nestkit.seed = 5
    assert build_pipeline(cfg).batch(0, epoch=0).fingerprint != a.batch(0, epoch=0).fingerprint


def test_noise_mixing_hits_the_drawn_energy_ratio(corpus):
    pipeline = build_pipeline(data_config(corpus["train"], corpus["noise"], batch_size=6, batch_augmentor=ALWAYS_NOISE))
    seen = 0
    for n in range(len(pipeline.sampler)):
        batch = pipeline.batch(n)
        noise = batch.noise.numpy()
        for i, record in enumerate(batch.records):
            aug = record["augment"]
            assert aug["mode"] == "noise" and aug["noise"]["cut_id"] is not None
            length = int(batch.audio_len[i])
            achieved = achieved_ratio_db(batch.audio[i].numpy(), noise[i], length)
            assert abs(achieved - aug["energy_ratio_db"]) < 0.5
            assert -5.0 <= aug["energy_ratio_db"] <= 20.0
            # only half of the utterance is overlaid (mix rate 0.5)
            assert np.count_nonzero(noise[i, :length]) <= aug["mix_len"]
            assert np.count_nonzero(noise[i, length:]) == 0
            seen += 1
    assert seen >= 30


def test_speech_mixing_takes_other_utterances_of_the_batch(corpus):
    pipeline = build_pipeline(
        data_config(corpus["train"], corpus["noise"], batch_size=4, batch_augmentor=ALWAYS_SPEECH)
    )
    batch = pipeline.batch(0)
    for i, record in enumerate(batch.records):
        aug = record["augment"]
        assert aug["mode"] == "speech"
        assert aug["speakers"] and batch.cut_ids[i] not in aug["speakers"]
        assert set(aug["speakers"]) <= set(batch.cut_ids)
        achieved = achieved_ratio_db(batch.audio[i].numpy(), batch.noise[i].numpy(), int(batch.audio_len[i]))
        assert abs(achieved - aug["energy_ratio_db"]) < 0.5


def test_rows_the_augmentor_skips_stay_clean(corpus):
    never = build_pipeline(data_config(corpus["train"], corpus["noise"], batch_augmentor={"prob": 0.0}))
    batch = never.batch(0)
    assert torch.equal(batch.noisy_audio, batch.audio)
    assert not batch.noise.any() and all(r["augment"] == {"mode": "skip"} for r in batch.records)
    # with the default prob 0.5, skipped rows are clean and the others are not
    default = build_pipeline(data_config(corpus["train"], corpus["noise"], batch_size=8, drop_last=True))
    modes = []
    for n in [(e, b) for e in range(6) for b in range(len(default.sampler))]:
        batch = default.batch(n[1], epoch=n[0])
        for i, record in enumerate(batch.records):
            mode = record["augment"]["mode"]
            modes.append(mode)
            same = torch.equal(batch.noisy_audio[i], batch.audio[i])
            assert same == (mode == "skip" or record["augment"].get("scale") == 0.0)
    assert len(modes) == 192 and 0.38 < modes.count("skip") / len(modes) < 0.62  # about 4 sigma


def test_no_noise_manifest_means_speech_mixing_only(corpus):
    pipeline = build_pipeline(data_config(corpus["train"], None, batch_augmentor=ALWAYS_NOISE))
    batch = pipeline.batch(0)
    for record in batch.records:
        assert record["augment"]["noise"]["fallback"] == "none"
        assert record["augment"]["scale"] == 0.0  # nothing to mix: nothing added
    assert torch.equal(batch.noisy_audio, batch.audio)


def test_short_audio_is_padded_by_repeating_or_zeros(tmp_path):
    short = write_speech(tmp_path / "short.wav", 0.3)
    manifest = manifest_of(tmp_path / "m.json", [(short, 0.3)])
    samples, _ = sf.read(short, dtype="float32")
    for mode in ("repeat", "zero"):
        pipeline = build_pipeline(
            data_config(manifest, batch_size=1, pad_audio_mode=mode, batch_augmentor=None, drop_last=False)
        )
        batch = pipeline.batch(0)
        assert batch.audio.shape == (1, 16000) and int(batch.audio_len[0]) == 16000
        row = batch.audio[0].numpy()
        assert np.array_equal(row[: samples.size], samples)
        tail = row[samples.size : 2 * samples.size]
        assert np.array_equal(tail, samples) if mode == "repeat" else not tail.any()
        assert batch.records[0]["padded_to"] == 16000


def test_other_rates_and_channels_are_resampled_and_downmixed(tmp_path):
    wobble = 0.01 * np.sin(2 * np.pi * 100 * np.arange(8000) / 8000)  # a signal, not a constant (dc_only)
    stereo = np.stack([0.25 + wobble, -0.05 + wobble], axis=1).astype(np.float32)
    path = tmp_path / "stereo8k.wav"
    sf.write(str(path), stereo, 8000, subtype="FLOAT")
    pipeline = build_pipeline(
        data_config(
            manifest_of(tmp_path / "m.json", [(str(path), 1.0)]), batch_size=1, batch_augmentor=None, drop_last=False
        )
    )
    batch = pipeline.batch(0)
    assert int(batch.audio_len[0]) == 16000
    assert abs(float(batch.audio[0, 4000:12000].mean()) - 0.1) < 1e-3


# ------------------------------------------------------------------------------------------------
# bad data: every class ends in a substitute, a quarantine record and a full-size batch


def _bad_files(folder: Path) -> dict[str, tuple[str, float]]:
    folder.mkdir(parents=True, exist_ok=True)
    bad = {}
    bad["missing"] = (str(folder / "gone.wav"), 1.5)
    (folder / "garbage.wav").write_bytes(os.urandom(4000))
    bad["not_audio"] = (str(folder / "garbage.wav"), 1.5)
    write_speech(folder / "short_file.wav", 1.0, seed=3)
    bad["truncated"] = (str(folder / "short_file.wav"), 2.5)  # the manifest claims more than the file has
    cut_short = write_speech(folder / "cut_short.wav", 3.0, seed=4)
    data = Path(cut_short).read_bytes()
    Path(cut_short).write_bytes(data[: len(data) // 3])  # bytes cut off: the header still promises 3 s
    bad["cut_short"] = (cut_short, 3.0)
    nan = np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 0.1
    nan[5000] = np.nan
    sf.write(str(folder / "nan.wav"), nan, 16000, subtype="FLOAT")
    bad["nan_inf"] = (str(folder / "nan.wav"), 1.5)
    sf.write(str(folder / "empty.wav"), np.zeros(0, np.float32), 16000)
    bad["empty"] = (str(folder / "empty.wav"), 1.5)
    os.mkfifo(folder / "pipe.wav")
    bad["not_regular_file"] = (str(folder / "pipe.wav"), 1.5)
    (folder / "dir.wav").mkdir()
    bad["directory"] = (str(folder / "dir.wav"), 1.5)
    os.symlink(folder / "nowhere.wav", folder / "link.wav")
    bad["broken_symlink"] = (str(folder / "link.wav"), 1.5)
    return bad


EXPECTED_CATEGORY = {
    "missing": "missing",
    "not_audio": "not_audio",
    "truncated": "truncated",
    "cut_short": "truncated",
    "nan_inf": "nan_inf",
    "empty": "empty",
    "not_regular_file": "not_regular_file",
    "directory": "not_regular_file",
    "broken_symlink": "broken_symlink",
}


@pytest.mark.timeout(120)
def test_every_bad_input_becomes_a_substitute_and_a_quarantine_record(tmp_path):
    bad = _bad_files(tmp_path / "bad")
    good = [(write_speech(tmp_path / f"good{i}.wav", 1.5, seed=i), 1.5) for i in range(12)]
    entries = list(bad.values()) + good
    manifest = manifest_of(tmp_path / "train.json", entries)
    run_dir = tmp_path / "run"
    cfg = data_config(manifest, None, batch_size=len(bad), shuffle=False, drop_last=False)
    pipeline = build_pipeline(cfg, run_dir=run_dir)
    batch = pipeline.batch(0)  # the bad files, in manifest order

    assert len(batch) == len(bad), "a bad sample never shrinks the batch"
    records = read_quarantine(run_dir)
    assert records == read_jsonl(run_dir / "quarantine" / "rank0.jsonl")
    # records come slot by slot; a substitute may itself be bad, then the chain goes on
    chains, at = [], 0
    for slot in range(len(bad)):
        chain = [records[at]]
        while chain[-1]["substitute"] != batch.records[slot]["cut_id"]:
            at += 1
            chain.append(records[at])
            assert chain[-1]["cut_id"] == chain[-2]["substitute"]
        at += 1
        chains.append(chain)
    assert at == len(records)
    bad_paths = {p for p, _ in bad.values()}
    for slot, (name, (path, _)) in enumerate(bad.items()):
        first = chains[slot][0]
        assert first["category"] == EXPECTED_CATEGORY[name], (name, first)
        assert (first["manifest"], first["line"], first["path"], first["epoch"], first["batch"]) == (
            manifest,
            slot + 1,
            path,
            0,
            0,
        )
        assert first["kind"] == "audio" and first["reason"] and first["rank"] == 0
        row = batch.records[slot]
        assert row["substitute_for"] == first["cut_id"] and row["path"] not in bad_paths
    assert [f["cut_id"] for f in batch.failures] == [r["cut_id"] for r in records]
    # the substitutes are deterministic: the same batch again picks the same ones
    again = build_pipeline(cfg).batch(0)
    assert again.fingerprint == batch.fingerprint


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "blocked.wav")
    good = write_speech(tmp_path / "ok.wav", 1.2)
    manifest = manifest_of(tmp_path / "m.json", [(str(tmp_path / "blocked.wav"), 1.2), (good, 1.2)])
    pipeline = build_pipeline(data_config(manifest, batch_size=2, shuffle=False))
    batch = pipeline.batch(0)  # would hang forever if the FIFO were opened
    assert batch.failures[0]["category"] == "not_regular_file" and "FIFO" in batch.failures[0]["reason"]


def test_bad_noise_is_retried_then_replaced_by_recorded_white_noise(tmp_path):
    speech = [(write_speech(tmp_path / f"s{i}.wav", 1.5, seed=i), 1.5) for i in range(4)]
    manifest = manifest_of(tmp_path / "m.json", speech)
    (tmp_path / "broken_noise.wav").write_bytes(b"RIFF....WAVEjunk")
    sf.write(str(tmp_path / "silent_noise.wav"), np.zeros(48000, np.float32), 16000)
    only_bad = manifest_of(
        tmp_path / "bad_noise.json",
        [(str(tmp_path / "broken_noise.wav"), 3.0), (str(tmp_path / "silent_noise.wav"), 3.0)],
    )
    run_dir = tmp_path / "run"
    cfg = data_config(
        manifest, only_bad, batch_size=4, batch_augmentor=ALWAYS_NOISE, noise_max_files=5, noise_max_segments=3
    )
    batch = build_pipeline(cfg, run_dir=run_dir).batch(0)
    for record in batch.records:
        noise = record["augment"]["noise"]
        assert noise["fallback"] == "white" and -90 <= noise["white_db"] < -46
        assert noise["files_tried"] == 5
    failures = [r for r in read_quarantine(run_dir) if r["kind"] == "noise"]
    assert len(failures) == 4 * 5
    assert {r["category"] for r in failures} == {"not_audio", "silent_noise"}
    assert all(r["manifest"] == only_bad and r["for_cut"] in batch.cut_ids for r in failures)
    # white noise was really added, at the drawn energy ratio
    for i, record in enumerate(batch.records):
        achieved = achieved_ratio_db(batch.audio[i].numpy(), batch.noise[i].numpy(), int(batch.audio_len[i]))
        assert abs(achieved - record["augment"]["energy_ratio_db"]) < 0.5


def test_noise_with_negative_mean_is_not_silent(tmp_path):
    # NeMo calls a noise silent when sum(samples) <= 0: most signed audio with a negative DC offset
    offset_noise = (np.random.default_rng(1).standard_normal(48000) * 0.05 - 0.02).astype(np.float32)
    assert offset_noise.sum() < 0
    sf.write(str(tmp_path / "n.wav"), offset_noise, 16000, subtype="FLOAT")
    speech = [(write_speech(tmp_path / f"s{i}.wav", 1.5, seed=i), 1.5) for i in range(2)]
    cfg = data_config(
        manifest_of(tmp_path / "m.json", speech),
        manifest_of(tmp_path / "noise.json", [(str(tmp_path / "n.wav"), 3.0)]),
        batch_size=2,
        batch_augmentor=ALWAYS_NOISE,
    )
    batch = build_pipeline(cfg).batch(0)
    assert all(r["augment"]["noise"]["fallback"] is None for r in batch.records)
    assert not batch.failures


def test_noise_segments_come_from_random_offsets(corpus, tmp_path):
    long_noise = write_noise(tmp_path / "long.wav", 20.0, kind="brown")
    cfg = data_config(
        corpus["train"],
        manifest_of(tmp_path / "n.json", [(long_noise, 20.0)]),
        batch_size=8,
        batch_augmentor=ALWAYS_NOISE,
    )
    pipeline = build_pipeline(cfg)
    offsets = {r["augment"]["noise"]["offset"] for n in range(len(pipeline.sampler)) for r in pipeline.batch(n).records}
    assert len(offsets) > 20 and all(0 <= o <= 20.0 for o in offsets)


def test_batch_moves_and_pins_as_a_unit(corpus):
    batch = build_pipeline(data_config(corpus["train"], corpus["noise"])).batch(0)
    moved = batch.to("cpu")
    assert torch.equal(moved.noisy_audio, batch.noisy_audio) and moved.cut_ids == batch.cut_ids
    assert math.isclose(batch.audio_seconds, float(batch.audio_len.sum()) / 16000)


# ------------------------------------------------------------------------------------------------
# noise files proven silent are read once: the batches are those of reading them every time


def _silent_noise_corpus(folder: Path) -> tuple[str, str]:
    """Speech, and a noise manifest of one loud file and five silent or nearly silent ones: digital
    silence, dither, room tone (provably silent), white noise at -81 dBFS (provable for long
    segments only) and a silent file with one loud click (silent segments, never provable)."""
    speech = [(write_speech(folder / f"s{i}.wav", 1.2 + 0.3 * i, seed=i), 1.2 + 0.3 * i) for i in range(10)]
    noises = [(write_noise(folder / "loud.wav", 6.0, kind="brown"), 6.0)]
    for name, samples in silent_noises(6.0, seed=3).items():
        noises.append((write_wav(folder / f"{name}.wav", samples), 6.0))
    rng = np.random.default_rng(5)
    white = rng.standard_normal(96000) * 10 ** (-81 / 20)
    sf.write(str(folder / "threshold.wav"), white.astype(np.float32), 16000, subtype="FLOAT")
    click = np.zeros(96000, np.float32)
    click[70000:70050] = 0.5
    sf.write(str(folder / "click.wav"), click, 16000, subtype="FLOAT")
    noises += [(str(folder / "threshold.wav"), 6.0), (str(folder / "click.wav"), 6.0)]
    return manifest_of(folder / "train.json", speech), manifest_of(folder / "noise.json", noises)


_WHEN = ("time", "elapsed_ms")  # when a failure was recorded and how long it took: not part of the batch


def _noise_outcomes(batches) -> list[tuple]:
    """What a batch is and what was recorded while building it (the failures are not in the fingerprint)."""
    return [(b.fingerprint, [{k: v for k, v in f.items() if k not in _WHEN} for f in b.failures]) for b in batches]


def test_silent_noise_is_decoded_once_and_batches_stay_the_same(tmp_path):
    train, noise = _silent_noise_corpus(tmp_path)
    cfg = data_config(train, noise, batch_size=4, batch_augmentor=ALWAYS_NOISE, noise_max_segments=30)
    positions = [(e, b) for e in range(3) for b in range(2)]

    slow = build_pipeline(cfg)
    slow.dataset.silence_memo = None  # every segment read, as before the memo existed
    expected = _noise_outcomes(slow.batch(b, epoch=e) for e, b in positions)
    categories = {f["category"] for _, failures in expected for f in failures}
    assert categories == {"silent_noise"}, "the corpus must make draw_noise meet silent files"

    pipeline = build_pipeline(cfg)
    memo = pipeline.dataset.silence_memo
    workers = pipeline.dataloader(num_workers=2)  # forked with an empty memo
    batches = []
    for epoch in range(3):
        pipeline.sampler.set_epoch(epoch)
        batches += list(itertools.islice(workers, 2))
    assert _noise_outcomes(batches) == expected, "cold memos in 2 workers"
    cold = _noise_outcomes(pipeline.batch(b, epoch=e) for e, b in positions)
    assert cold == expected, "a cold memo in process"
    assert [Path(p).stem for p in memo.proven()] == ["digital_silence", "dither", "room_tone", "threshold"]
    skipped_cold = memo.reads_skipped
    assert skipped_cold > 0
    warm = _noise_outcomes(pipeline.batch(b, epoch=e) for e, b in positions)
    assert warm == expected, "a warm memo"
    assert memo.reads_skipped - skipped_cold > skipped_cold  # warm: not even the first segment is read

    script = (
        "import json; from tests.helpers import data_config; from nestkit.data.pipeline import build_pipeline\n"
        f"p = build_pipeline(data_config({train!r}, {noise!r}, batch_size=4, "
        f"batch_augmentor={ALWAYS_NOISE!r}, noise_max_segments=30))\n"
        f"print(json.dumps([p.batch(b, epoch=e).fingerprint for e, b in {positions!r}]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2]
    )
    assert json.loads(out.stdout) == [fingerprint for fingerprint, _ in expected], "a fresh process"


def test_a_silent_noise_file_that_changes_is_read_again(tmp_path):
    train, noise = _silent_noise_corpus(tmp_path)
    cfg = data_config(train, noise, batch_size=4, batch_augmentor=ALWAYS_NOISE, noise_max_segments=30)
    pipeline = build_pipeline(cfg)
    for b in range(2):
        pipeline.batch(b)
    assert len(pipeline.dataset.silence_memo.proven()) == 4
    # the room tone becomes loud (a file replaced in place): the memo notices, batches follow the file
    write_wav(tmp_path / "room_tone.wav", noise_like(6.0, 11, "pink"))
    fresh = build_pipeline(cfg)
    fresh.dataset.silence_memo = None
    for b in range(2):
        after, reference = pipeline.batch(b), fresh.batch(b)
        assert _noise_outcomes([after]) == _noise_outcomes([reference])
    used = {r["augment"]["noise"]["cut_id"] for b in range(2) for r in fresh.batch(b).records}
    assert any(cut_id and cut_id.startswith("room_tone") for cut_id in used)
    assert "room_tone" not in {Path(p).stem for p in pipeline.dataset.silence_memo.proven()}


def test_a_silence_proof_holds_for_every_segment_it_covers(tmp_path):
    """The bound behind the memo, checked against every segment of a file at the threshold."""
    train, noise = _silent_noise_corpus(tmp_path)
    index = CutIndex.build([noise], 16000)
    cut = next(index.cut(i) for i in range(len(index)) if index.cut(i).id.startswith("threshold"))
    memo = SilenceMemo()
    assert memo.proves_silent(cut, 16000, 16000, -80.0, None, prove=True)
    samples, _ = sf.read(str(tmp_path / "threshold.wav"), dtype="float32")
    energy = np.concatenate(([0.0], np.cumsum(samples.astype(np.float64) ** 2)))
    decisions = {}
    for n in (2, 800, 1600, 1700, 3200, 4000, 9600, 16000, 40000):
        decisions[n] = memo.proves_silent(cut, n, 16000, -80.0, None, prove=False)
        loudest = float(np.max(energy[n:] - energy[:-n])) / n
        if decisions[n]:
            assert 10 * math.log10(loudest) <= -80.0, n
    assert decisions[16000] and not decisions[2], decisions  # long segments proven, short ones read


def test_the_fast_downmix_is_numpys_channel_mean_bit_for_bit():
    rng = np.random.default_rng(2)
    for channels in range(1, 10):
        frames = (rng.standard_normal((5000, channels)) * 0.3).astype(np.float32)
        frames[:4] = -0.0  # signed zeros average to +0.0, as numpy's sum starts from +0.0
        frames[4:8, 0] = np.inf
        expected = frames.mean(axis=1, dtype=np.float32)
        assert downmix(frames).tobytes() == expected.tobytes(), channels
