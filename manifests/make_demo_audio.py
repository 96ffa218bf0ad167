"""Make the demo corpus under manifests/demo/: synthetic speech-like utterances, noises, manifests.

    python manifests/make_demo_audio.py [--check]

Deterministic: the manifests it writes are the ones committed next to it (`--check` fails if they
differ). Takes a few seconds; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from nestkit.data.synthetic import make_corpus

DEMO = Path(__file__).resolve().parent / "demo"
SETTINGS = dict(num_utterances=96, num_noises=8, min_seconds=1.5, max_seconds=6.0, seed=2024)
MANIFESTS = ("train.json", "validation.json", "noise.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="verify the committed manifests match the generator")
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            make_corpus(tmp, **SETTINGS)
            stale = [m for m in MANIFESTS if (Path(tmp) / m).read_text() != (DEMO / m).read_text()]
        if stale:
            print(f"manifests/demo: {', '.join(stale)} differ from what the generator makes. Re-run without --check")
            return 1
        print("manifests/demo: committed manifests match the generator")
        return 0
    paths = make_corpus(DEMO, **SETTINGS)
    print(f"demo corpus in {DEMO}: " + ", ".join(Path(p).name for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
