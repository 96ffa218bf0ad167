"""Make the demo corpus under manifests/demo/: synthetic speech in a small phone "language", noises, manifests.

    python manifests/make_demo_audio.py [--check | --write-reference]

Deterministic (a pure function of SETTINGS): the manifests it writes are the ones committed next
to it, and the audio matches the committed summary in demo/audio_summary.tsv (per file: sample
count, RMS and the level of 8 frequency bands). `--check` regenerates everything in a temporary
folder and fails if a manifest differs or a file's summary moves by more than REFERENCE_TOLERANCE_DB
(the audio itself is not committed; the tolerance absorbs last-bit differences of floating point
between machines, not a change of the generator). `--write-reference` rewrites the summary after
a deliberate change. Takes a few seconds; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from nestkit.data.synthetic import make_corpus

DEMO = Path(__file__).resolve().parent / "demo"
SETTINGS = dict(num_utterances=96, num_noises=8, min_seconds=1.5, max_seconds=6.0, seed=2024, voice="phones")
MANIFESTS = ("train.json", "validation.json", "noise.json")
REFERENCE = DEMO / "audio_summary.tsv"  # not .json: .ci/run validates every *.json under manifests/ as a manifest
BAND_EDGES_HZ = (0, 250, 500, 1000, 2000, 3000, 4000, 6000, 8000)
REFERENCE_TOLERANCE_DB = 0.05
SILENCE_DB = -120.0  # floor for empty bands


def db(power: float) -> float:
    return round(max(10 * np.log10(power) if power > 0 else SILENCE_DB, SILENCE_DB), 2)


def summary(folder: Path) -> dict[str, dict]:
    """Per audio file of the corpus: samples, RMS (dB) and band levels (dB), rounded."""
    out = {}
    for path in sorted([*folder.glob("audio/*.wav"), *folder.glob("noise/*.wav")]):
        samples, rate = sf.read(path, dtype="float64")
        spectrum = np.abs(np.fft.rfft(samples)) ** 2 / len(samples) ** 2
        freqs = np.fft.rfftfreq(len(samples), 1 / rate)
        bands = [db(spectrum[(freqs >= lo) & (freqs < hi)].sum()) for lo, hi in zip(BAND_EDGES_HZ, BAND_EDGES_HZ[1:])]
        out[str(path.relative_to(folder))] = {
            "samples": len(samples),
            "rms_db": db(np.mean(samples**2)),
            "bands_db": bands,
        }
    return out


def write_summary(path: Path, files: dict[str, dict]) -> None:
    """One line per file: path, samples, RMS dB, band levels dB (tab separated)."""
    header = "\t".join(
        ["file", "samples", "rms_db", *(f"{lo}-{hi}Hz_db" for lo, hi in zip(BAND_EDGES_HZ, BAND_EDGES_HZ[1:]))]
    )
    rows = [
        "\t".join([name, str(f["samples"]), str(f["rms_db"]), *map(str, f["bands_db"])]) for name, f in files.items()
    ]
    path.write_text("\n".join([header, *rows]) + "\n")


def read_summary(path: Path) -> dict[str, dict]:
    files = {}
    for line in path.read_text().splitlines()[1:]:
        name, samples, rms, *bands = line.split("\t")
        files[name] = {"samples": int(samples), "rms_db": float(rms), "bands_db": [float(b) for b in bands]}
    return files


def differences(made: dict[str, dict], reference: dict[str, dict]) -> list[str]:
    problems = [f"{name}: missing (expected in the reference)" for name in sorted(set(made) - set(reference))]
    problems += [f"{name}: not made (the reference has it)" for name in sorted(set(reference) - set(made))]
    for name in sorted(set(made) & set(reference)):
        a, b = made[name], reference[name]
        levels = np.array([a["rms_db"], *a["bands_db"]]) - np.array([b["rms_db"], *b["bands_db"]])
        if a["samples"] != b["samples"] or np.max(np.abs(levels)) > REFERENCE_TOLERANCE_DB:
            problems.append(
                f"{name}: audio differs (expected {b['samples']} samples and levels within "
                f"{REFERENCE_TOLERANCE_DB} dB, got {a['samples']} samples, {np.max(np.abs(levels)):.2f} dB apart)"
            )
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="verify the committed manifests and audio summary")
    action.add_argument("--write-reference", action="store_true", help="rewrite demo/audio_summary.tsv")
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            make_corpus(tmp, **SETTINGS)
            stale = [f"{m}: differs" for m in MANIFESTS if (Path(tmp) / m).read_text() != (DEMO / m).read_text()]
            stale += differences(summary(Path(tmp)), read_summary(REFERENCE))
        if stale:
            print("manifests/demo: the generator no longer makes the committed corpus:")
            print("\n".join(f"  {line}" for line in stale))
            print("After a deliberate change: python manifests/make_demo_audio.py --write-reference (and commit)")
            return 1
        print("manifests/demo: committed manifests and audio summary match the generator")
        return 0
    paths = make_corpus(DEMO, **SETTINGS)
    if args.write_reference:
        write_summary(REFERENCE, summary(DEMO))
        print(f"wrote {REFERENCE}")
    print(f"demo corpus in {DEMO}: " + ", ".join(Path(p).name for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
