"""Shared fixtures: a generated audio corpus (no network, no bundled data)."""

from __future__ import annotations

import pytest

from nestkit.data.synthetic import make_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, str]:
    """A small speech + noise corpus with NeMo manifests: {"train", "validation", "noise", "dir"}."""
    folder = tmp_path_factory.mktemp("corpus")
    paths = make_corpus(folder, num_utterances=40, num_noises=5, min_seconds=1.2, max_seconds=4.0, seed=7)
    return {**paths, "dir": str(folder)}
