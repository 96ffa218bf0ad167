"""Deterministic synthetic audio for the demo corpus, the tests and the benchmarks.

Nothing is downloaded: "speech" is a harmonic source with a gliding pitch, syllable-rate amplitude
modulation and a few formant resonances; "noise" is coloured noise, hum or babble-like mixtures.
Everything is a pure function of its seed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000  # Hz


def speech_like(seconds: float, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sample_rate)))
    t = np.arange(n) / sample_rate
    f0 = rng.uniform(90, 240) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 0.7) * t + rng.uniform(0, 6.3)))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6.3))) ** 2
    signal = harmonics * syllables
    # a crude formant colouring: a few damped resonators applied in the frequency domain
    spectrum = np.fft.rfft(signal)
    freqs = np.fft.rfftfreq(n, 1 / sample_rate)
    gain = np.zeros_like(freqs)
    for centre, width in ((rng.uniform(400, 900), 120), (rng.uniform(1000, 2200), 200), (rng.uniform(2400, 3200), 300)):
        gain += 1.0 / (1.0 + ((freqs - centre) / width) ** 2)
    signal = np.fft.irfft(spectrum * (0.1 + gain), n)
    signal += 0.003 * rng.standard_normal(n)
    return (0.3 * signal / (np.max(np.abs(signal)) + 1e-9)).astype(np.float32)


def noise_like(seconds: float, seed: int, kind: str = "pink", sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sample_rate)))
    if kind == "white":
        signal = rng.standard_normal(n)
    elif kind in ("pink", "brown"):
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.maximum(np.fft.rfftfreq(n, 1 / sample_rate), 1.0)
        signal = np.fft.irfft(spectrum / (freqs ** (0.5 if kind == "pink" else 1.0)), n)
    elif kind == "hum":
        t = np.arange(n) / sample_rate
        hum = (np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 6))
        signal = sum(hum, np.zeros(n))  # an array start (sum's own is 0): equal values, typed as an array
        signal += 0.05 * rng.standard_normal(n)
    elif kind == "babble":
        voices = (speech_like(seconds, seed * 31 + k, sample_rate) for k in range(4))
        signal = sum(voices, np.zeros(n, np.float32))
    else:
        raise ValueError(f"noise kind {kind!r}: unknown (expected white, pink, brown, hum or babble)")
    signal = np.asarray(signal, dtype=np.float64)
    return (0.2 * signal / (np.max(np.abs(signal)) + 1e-9)).astype(np.float32)


def write_wav(
    path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16"
) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, sample_rate, subtype=subtype)
    return str(path)


def write_manifest(path: str | os.PathLike, entries: list[dict]) -> str:
    """One JSON line per entry. The same text is not written again: a manifest's mtime is part of
    its cut index's identity, so rewriting it unchanged would rebuild the index (make demo, twice)."""
    path = Path(path)
    text = "".join(json.dumps(entry) + "\n" for entry in entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (path.is_file() and path.read_text() == text):
        path.write_text(text)
    return str(path)


def make_corpus(
    folder: str | os.PathLike,
    num_utterances: int = 48,
    num_noises: int = 6,
    min_seconds: float = 1.5,
    max_seconds: float = 6.0,
    seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
    voice: str = "harmonic",
) -> dict[str, str]:
    """Write speech-like utterances, noises and NeMo manifests (relative paths) under `folder`.

    `voice`: "harmonic" (speech_like: a gliding harmonic source) or "phones" (phone_speech: words
    of a small phone inventory, whose masked parts context predicts). Durations, noises and
    manifests do not depend on it. Returns the manifest paths: {"train": ..., "validation": ..., "noise": ...}.
    """
    if voice not in VOICES:
        raise ValueError(f"voice {voice!r}: unknown (expected one of {', '.join(VOICES)})")
    speech = VOICES[voice]
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(num_utterances):
        seconds = round(float(rng.uniform(min_seconds, max_seconds)), 2)
        rel = f"audio/utt{i:04d}.wav"
        write_wav(folder / rel, speech(seconds, seed * 100003 + i, sample_rate), sample_rate)
        entries.append({"audio_filepath": rel, "duration": seconds, "text": ""})
    kinds = ["pink", "brown", "hum", "babble", "white"]
    noise_entries = []
    for i in range(num_noises):
        seconds = round(float(rng.uniform(4.0, 12.0)), 2)
        rel = f"noise/noise{i:03d}.wav"
        write_wav(folder / rel, noise_like(seconds, seed * 7919 + i, kinds[i % len(kinds)], sample_rate), sample_rate)
        noise_entries.append({"audio_filepath": rel, "duration": seconds})
    n_val = max(1, num_utterances // 8)
    return {
        "train": write_manifest(folder / "train.json", entries[n_val:]),
        "validation": write_manifest(folder / "validation.json", entries[:n_val]),
        "noise": write_manifest(folder / "noise.json", noise_entries),
    }


# What a real speech corpus looks like, as measured on one by a user (issue 9): short utterances
# (mean ~7.6 s), mostly mono 16 kHz 16-bit WAV, some FLAC and Ogg/Vorbis, a few stereo and 44.1 kHz
# files, and a noise collection with a few silent or near-silent recordings.
REALISTIC_MEAN_S = 7.6
REALISTIC_SPREAD = 0.55  # sigma of the log-normal durations: most 3-15 s
REALISTIC_RANGE_S = (1.0, 20.0)
AudioFormat = tuple[str, str, int, int]  # (container, subtype, sample rate, channels)
# (share of the utterances, container, subtype, sample rate, channels)
REALISTIC_FORMATS: tuple[tuple[float, str, str, int, int], ...] = (
    (0.80, "WAV", "PCM_16", 16000, 1),
    (0.08, "FLAC", "PCM_16", 16000, 1),
    (0.06, "OGG", "VORBIS", 16000, 1),
    (0.03, "WAV", "PCM_16", 16000, 2),
    (0.03, "WAV", "PCM_16", 44100, 1),
)
_SUFFIX = {"WAV": ".wav", "FLAC": ".flac", "OGG": ".ogg"}
_LSB_16 = 1.0 / 32768


def realistic_durations(count: int, rng: np.random.Generator) -> np.ndarray:
    """Log-normal durations (seconds, 2 decimals) clipped to REALISTIC_RANGE_S, rescaled once so that
    even a small corpus has a mean close to REALISTIC_MEAN_S."""
    mu = math.log(REALISTIC_MEAN_S) - REALISTIC_SPREAD**2 / 2
    seconds = np.clip(rng.lognormal(mu, REALISTIC_SPREAD, count), *REALISTIC_RANGE_S)
    seconds = np.clip(seconds * (REALISTIC_MEAN_S / seconds.mean()), *REALISTIC_RANGE_S)
    return np.round(seconds, 2)


def _format_plan(count: int, rng: np.random.Generator) -> list[AudioFormat]:
    """Each utterance's (container, subtype, rate, channels): the shares of REALISTIC_FORMATS, each
    format at least once, in a seeded random order."""
    formats: list[AudioFormat] = [
        (container, subtype, rate, channels) for _, container, subtype, rate, channels in REALISTIC_FORMATS
    ]
    quotas = [max(1, round(share * count)) for share, *_ in REALISTIC_FORMATS[1:]]
    plan = [fmt for fmt, quota in zip(formats[1:], quotas) for _ in range(quota)]
    plan += [formats[0]] * max(0, count - len(plan))
    return [plan[i] for i in rng.permutation(len(plan))[:count]]


def silent_noises(seconds: float, seed: int, sample_rate: int = SAMPLE_RATE) -> dict[str, np.ndarray]:
    """Three noise recordings a real collection has: digital silence, 16-bit dither (+-1 LSB,
    about -92 dBFS) and a near-silent room tone (pink noise at about -88 dBFS RMS)."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sample_rate)))
    tone = noise_like(seconds, seed, "pink", sample_rate).astype(np.float64)
    tone *= 10 ** (-88 / 20) / math.sqrt(float(np.mean(tone**2)))
    return {
        "digital_silence": np.zeros(n, np.float32),
        "dither": (rng.integers(-1, 2, n) * _LSB_16).astype(np.float32),
        "room_tone": tone.astype(np.float32),
    }


def make_realistic_corpus(
    folder: str | os.PathLike, num_utterances: int = 400, num_noises: int = 12, seed: int = 0
) -> dict[str, str | float]:
    """A corpus shaped like real ones (see REALISTIC_*): utterances, `num_noises` noise files of
    10-40 s (one FLAC) plus the three of `silent_noises`, and NeMo manifests with absolute paths.

    Returns {"train", "noise": manifest paths, "audio_seconds": total utterance duration}.
    """
    folder = Path(folder).absolute()
    rng = np.random.default_rng(seed)
    entries = []
    audio_seconds = 0.0
    for i, (seconds, (container, subtype, rate, channels)) in enumerate(
        zip(realistic_durations(num_utterances, rng), _format_plan(num_utterances, rng))
    ):
        samples = speech_like(float(seconds), seed * 100003 + i, rate)
        if channels == 2:  # a second microphone: the same talker, delayed and quieter
            samples = np.stack([samples, 0.7 * np.roll(samples, 40)], axis=1)
        path = folder / "audio" / f"utt{i:05d}{_SUFFIX[container]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), samples, rate, subtype=subtype, format=container)
        entries.append({"audio_filepath": str(path), "duration": float(seconds), "text": ""})
        audio_seconds += float(seconds)
    kinds = ["pink", "brown", "hum", "babble", "white"]
    noise_entries = []
    for i in range(num_noises):
        seconds = round(float(rng.uniform(10.0, 40.0)), 2)
        suffix = ".flac" if i == num_noises - 1 else ".wav"
        path = folder / "noise" / f"noise{i:03d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), noise_like(seconds, seed * 7919 + i, kinds[i % len(kinds)]), SAMPLE_RATE, subtype="PCM_16")
        noise_entries.append({"audio_filepath": str(path), "duration": seconds})
    for name, samples in silent_noises(20.0, seed).items():
        written = write_wav(folder / "noise" / f"{name}.wav", samples)
        noise_entries.append({"audio_filepath": written, "duration": 20.0})
    return {
        "train": write_manifest(folder / "train.json", entries),
        "noise": write_manifest(folder / "noise.json", noise_entries),
        "audio_seconds": round(audio_seconds, 2),
    }


# -- a learnable "language": phones, words and speakers ----------------------------------------
#
# The demo must show learning within minutes, so its speech has what makes masked speech
# predictable, in a form a tiny model picks up fast: a small phone inventory (vowels and a nasal
# as formant patterns on a harmonic source, fricatives as noise bands, short pauses), words made
# of phones, a word grammar (each word is followed by one of two), a few speakers (pitch and
# formant scale), and drawn-out phones (0.2-0.5 s: longer than the demo's masks, so the frames
# around a masked stretch reveal what it hid). Everything is a pure function of the seed.

FORMANT_BANDWIDTHS = (90.0, 140.0, 220.0)  # Hz, of F1, F2, F3
VOWELS = {  # formants in Hz (classic adult averages)
    "a": (730.0, 1090.0, 2440.0),
    "i": (270.0, 2290.0, 3010.0),
    "u": (300.0, 870.0, 2240.0),
    "e": (530.0, 1840.0, 2480.0),
    "o": (570.0, 840.0, 2410.0),
    "m": (250.0, 1200.0, 2200.0),  # a nasal: voiced, quiet, low
}
FRICATIVES = {"s": (4200.0, 7500.0), "S": (2000.0, 4200.0), "f": (1000.0, 7800.0)}  # noise bands, Hz
PHONE_LEVELS = {"a": 1.0, "i": 0.8, "u": 0.8, "e": 0.9, "o": 0.9, "m": 0.35, "s": 0.35, "S": 0.45, "f": 0.15, "_": 0.0}
WORDS = ("mas", "Sio", "fa", "ume", "so", "mi", "eSa", "ufo")  # "_" (a pause) is in no word
NEXT_WORDS = {w: (WORDS[(i + 1) % len(WORDS)], WORDS[(i * 3 + 2) % len(WORDS)]) for i, w in enumerate(WORDS)}
PHONE_INVENTORY = ("_", *VOWELS, *FRICATIVES)
PHONE_SECONDS = {"vowel": (0.30, 0.50), "fricative": (0.20, 0.30), "pause": (0.05, 0.10)}
# the speakers: (pitch Hz, formant scale); each utterance is spoken by one of them
SPEAKERS = ((110.0, 0.94), (160.0, 1.0), (220.0, 1.08))
PITCH_WOBBLE = 0.03  # relative depth of a slow pitch movement within an utterance
ENVELOPE_HOP_SECONDS = 0.005  # the spectral envelope is set every 5 ms and interpolated between
CROSSFADE_SECONDS = 0.02  # phone boundaries blend over this long
HARMONIC_CEILING_HZ = 7000.0
FRICATIVE_TO_VOICED = 0.25  # a fricative's RMS against the loudest voiced peak
BACKGROUND_NOISE = 0.0003  # white noise under everything, relative to the loudest peak


def phone_sequence(seconds: float, rng: np.random.Generator) -> list[tuple[str, float]]:
    """(phone, duration s) pairs filling `seconds`: pause, words joined by the grammar, pauses between."""
    phones = [("_", float(rng.uniform(*PHONE_SECONDS["pause"])))]
    total = phones[0][1]
    word = WORDS[int(rng.integers(len(WORDS)))]
    while total < seconds:
        for phone in word:
            kind = "fricative" if phone in FRICATIVES else "vowel"
            phones.append((phone, float(rng.uniform(*PHONE_SECONDS[kind]))))
        phones.append(("_", float(rng.uniform(*PHONE_SECONDS["pause"]))))
        total = sum(d for _, d in phones)
        word = NEXT_WORDS[word][int(rng.integers(2))]
    return phones


def _formant_gain(freqs: np.ndarray, formants: tuple[float, ...], scale: float) -> np.ndarray:
    gain = np.zeros_like(freqs)
    for centre, width in zip(formants, FORMANT_BANDWIDTHS):
        gain += 1.0 / (1.0 + ((freqs - centre * scale) / width) ** 2)
    return gain


def phone_speech(seconds: float, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speech in the demo's phone "language", spoken by one of SPEAKERS (chosen by the seed)."""
    return phone_speech_aligned(seconds, seed, sample_rate)[0]


def phone_speech_aligned(
    seconds: float, seed: int, sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, np.ndarray, int]:
    """phone_speech's samples, the phone (index into PHONE_INVENTORY) of every ENVELOPE_HOP_SECONDS
    frame, and the speaker (index into SPEAKERS)."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sample_rate)))
    speaker = int(rng.integers(len(SPEAKERS)))
    f0_base, formant_scale = SPEAKERS[speaker]
    inventory = PHONE_INVENTORY
    # which phone sounds in each envelope frame
    frames = int(n / sample_rate / ENVELOPE_HOP_SECONDS) + 2
    phone_at = np.zeros(frames, dtype=np.int64)
    at = 0.0
    for phone, duration in phone_sequence(seconds, rng):
        first, last = int(at / ENVELOPE_HOP_SECONDS), int((at + duration) / ENVELOPE_HOP_SECONDS)
        phone_at[first:last] = inventory.index(phone)
        at += duration
    phone_at = phone_at[:frames]
    t = np.arange(n) / sample_rate
    frame_t = np.arange(frames) * ENVELOPE_HOP_SECONDS
    width = max(1, int(CROSSFADE_SECONDS / ENVELOPE_HOP_SECONDS))

    def track(per_frame: np.ndarray) -> np.ndarray:  # per-frame values -> per sample, blended at boundaries
        return np.interp(t, frame_t, np.convolve(per_frame, np.ones(width) / width, mode="same"))

    harmonics = np.arange(1, int(HARMONIC_CEILING_HZ / f0_base) + 1)
    # (phones, harmonics): each harmonic's amplitude in each phone (0 for unvoiced phones)
    gains = np.zeros((len(inventory), len(harmonics)))
    for phone, formants in VOWELS.items():
        gains[inventory.index(phone)] = PHONE_LEVELS[phone] * _formant_gain(
            harmonics * f0_base, formants, formant_scale
        )
    f0 = f0_base * (1 + PITCH_WOBBLE * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 6.3)))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = np.zeros(n)
    for k, harmonic in enumerate(harmonics):
        voiced += track(gains[phone_at, k]) * np.sin(harmonic * phase) / np.sqrt(harmonic)
    white = rng.standard_normal(n)
    spectrum, freqs = np.fft.rfft(white), np.fft.rfftfreq(n, 1 / sample_rate)
    noise = np.zeros(n)
    for phone, (low, high) in FRICATIVES.items():
        band = np.fft.irfft(spectrum * ((freqs >= low) & (freqs <= high)), n)
        level = np.where(phone_at == inventory.index(phone), PHONE_LEVELS[phone], 0.0)
        noise += track(level) * band / (np.std(band) + 1e-12)
    signal = voiced / (np.max(np.abs(voiced)) + 1e-9) + noise * FRICATIVE_TO_VOICED
    signal += BACKGROUND_NOISE * rng.standard_normal(n)
    return (0.3 * signal / (np.max(np.abs(signal)) + 1e-9)).astype(np.float32), phone_at, speaker


VOICES = {"harmonic": speech_like, "phones": phone_speech}
