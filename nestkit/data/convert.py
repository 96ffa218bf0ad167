"""NeMo JSON-lines manifests to a lhotse CutSet manifest.

Without probing, each line becomes the same cut nestkit reads at training time (nominal sampling
rate, the audio not opened). With probing (the default for a one-off conversion), each file's
header is read so the lhotse recording states its real sampling rate, length and channels; a
multi-channel file becomes a MultiCut over all channels, which nestkit averages as NeMo does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import soundfile as sf
from lhotse import MultiCut, Recording
from lhotse.audio import AudioSource
from lhotse.serialization import SequentialJsonlWriter

from nestkit.core.errors import AudioLoadError, ManifestError, NestkitError
from nestkit.data.audio import check_path
from nestkit.data.index import CutIndex
from nestkit.data.manifest import FORMAT_NEMO, nemo_cut, nemo_entry


@dataclass
class ConvertReport:
    written: int = 0
    problems: list[str] = field(default_factory=list)


def _probed_cut(entry, manifest: str, line: int, sampling_rate: int):
    check_path(entry.path)
    try:
        info = sf.info(entry.path)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioLoadError("not_audio", entry.path, f"not readable as audio ({exc})") from None
    if entry.offset + entry.duration > info.duration + 0.1:
        raise AudioLoadError(
            "truncated",
            entry.path,
            f"segment ends at {entry.offset + entry.duration:.3f} s but the file holds {info.duration:.3f} s",
        )
    cut = nemo_cut(entry, manifest, line, sampling_rate)
    channels = list(range(info.channels))
    cut.recording = Recording(
        id=cut.id,
        sources=[AudioSource(type="file", channels=channels, source=entry.path)],
        sampling_rate=info.samplerate,
        num_samples=info.frames,
        duration=info.frames / info.samplerate,
    )
    if info.channels > 1:
        cut = MultiCut(
            id=cut.id,
            start=cut.start,
            duration=cut.duration,
            channel=channels,
            recording=cut.recording,
            custom=cut.custom,
        )
    return cut


def nemo_to_lhotse(
    manifests: Sequence[str],
    out_path: str,
    probe: bool = True,
    sampling_rate: int = 16000,
    progress: Callable[[int], None] | None = None,
) -> ConvertReport:
    """Convert; every bad line or unreadable file is reported, and nothing is written if any is."""
    index = CutIndex.build(list(manifests), sampling_rate)  # raises listing every malformed line
    for path, fmt in zip(index.manifests, index.formats):
        if fmt != FORMAT_NEMO:
            raise NestkitError(f"manifest {path}: already a lhotse manifest (expected NeMo JSON lines)")
    report = ConvertReport()
    cuts = []
    for row in range(len(index)):
        manifest, line = index.manifests[int(index.source[row])], int(index.line[row])
        try:
            entry = nemo_entry(index.item(row), manifest, line)
            cuts.append(
                _probed_cut(entry, manifest, line, sampling_rate)
                if probe
                else nemo_cut(entry, manifest, line, sampling_rate)
            )
        except (ManifestError, AudioLoadError) as exc:
            report.problems.append(f"{manifest}:{line}: {exc}")
        if progress:
            progress(1)
    ids: dict[str, str] = {}  # cut id -> manifest:line
    for cut in cuts:
        if cut.id in ids:
            report.problems.append(
                f"cut {cut.id}: duplicate id ({ids[cut.id]} and {cut.custom['manifest']}:{cut.custom['line']}). "
                "Two manifests list a file with the same name at the same line"
            )
        ids[cut.id] = f"{cut.custom['manifest']}:{cut.custom['line']}"
    if report.problems:
        return report
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with SequentialJsonlWriter(out_path) as writer:
        for cut in cuts:
            writer.write(cut)
    report.written = len(cuts)
    return report
