"""The synthetic phone "language" the demo trains on: a pure function of its seed, with the structure
that makes masked stretches predictable."""

from __future__ import annotations

import os
import time

import numpy as np

from nestkit.data import synthetic
from nestkit.data.synthetic import (
    ENVELOPE_HOP_SECONDS,
    NEXT_WORDS,
    PHONE_INVENTORY,
    PHONE_SECONDS,
    SPEAKERS,
    WORDS,
    phone_sequence,
    phone_speech,
    phone_speech_aligned,
)


def test_phone_speech_is_a_pure_function_of_its_seed():
    a, b, c = phone_speech(2.0, 7), phone_speech(2.0, 7), phone_speech(2.0, 8)
    assert a.dtype == np.float32 and a.shape == (32000,)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.29 < np.max(np.abs(a)) <= 0.3  # peak-normalised, no clipping


def test_utterances_are_words_of_the_grammar_in_drawn_out_phones():
    phones = phone_sequence(6.0, np.random.default_rng(3))
    assert phones[0][0] == "_" and sum(d for _, d in phones) >= 6.0
    spoken = "".join(p for p, _ in phones).strip("_").split("_")
    assert all(word in WORDS for word in spoken)
    assert all(after in NEXT_WORDS[before] for before, after in zip(spoken, spoken[1:]))
    shortest_sound = min(PHONE_SECONDS["vowel"][0], PHONE_SECONDS["fricative"][0])
    assert all(d >= shortest_sound for p, d in phones if p != "_")


def test_alignment_names_the_phone_and_speaker_of_each_frame():
    samples, phone_at, speaker = phone_speech_aligned(3.0, 11)
    assert 0 <= speaker < len(SPEAKERS)
    assert len(phone_at) >= len(samples) / 16000 / ENVELOPE_HOP_SECONDS
    assert set(phone_at.tolist()) <= set(range(len(PHONE_INVENTORY)))
    hop = int(ENVELOPE_HOP_SECONDS * 16000)
    # pauses are near silent, sounds are not
    energy = [np.sqrt(np.mean(samples[i * hop : (i + 1) * hop] ** 2)) for i in range(len(samples) // hop)]
    pauses = [e for e, p in zip(energy, phone_at) if PHONE_INVENTORY[p] == "_"]
    sounds = [e for e, p in zip(energy, phone_at) if PHONE_INVENTORY[p] in ("a", "e", "o")]
    assert pauses and sounds and np.median(pauses) < 0.05 * np.median(sounds)


def test_make_corpus_keeps_its_harmonic_default_and_its_manifests_for_either_voice(tmp_path):
    harmonic = synthetic.make_corpus(tmp_path / "h", num_utterances=8, num_noises=1, seed=5)
    phones = synthetic.make_corpus(tmp_path / "p", num_utterances=8, num_noises=1, seed=5, voice="phones")
    for name in ("train", "validation", "noise"):
        assert open(harmonic[name]).read() == open(phones[name]).read()
    assert (tmp_path / "h" / "audio" / "utt0003.wav").read_bytes() != (
        tmp_path / "p" / "audio" / "utt0003.wav"
    ).read_bytes()


def test_making_the_corpus_again_leaves_its_manifests_and_their_cut_index_as_they_were(tmp_path):
    """`make demo` run twice: the manifests are not rewritten, so the index built from them stays valid."""
    from nestkit.data.corpus import manifest_corpus
    from nestkit.data.index import open_index

    paths = synthetic.make_corpus(tmp_path, num_utterances=6, num_noises=1, seed=5, voice="phones")
    heard: list[str] = []
    open_index(manifest_corpus(paths["train"]), notify=heard.append)
    before = {name: os.stat(path).st_mtime_ns for name, path in paths.items()}
    time.sleep(0.01)
    again = synthetic.make_corpus(tmp_path, num_utterances=6, num_noises=1, seed=5, voice="phones")
    assert {name: os.stat(path).st_mtime_ns for name, path in again.items()} == before
    assert open_index(manifest_corpus(paths["train"]), notify=heard.append).notices == [] and heard == []
    other = synthetic.make_corpus(tmp_path, num_utterances=7, num_noises=1, seed=5, voice="phones")
    assert os.stat(other["train"]).st_mtime_ns != before["train"]  # other text: written
