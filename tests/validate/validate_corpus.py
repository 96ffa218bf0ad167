"""Real bad audio files and manifests for the validate-manifest tests, plus a way to run the real CLI.

Every file is made the way it happens in the wild: header bytes overwritten, bytes cut off the end,
float WAVs holding NaN, FLAC written under a .wav name, links to nowhere, a real FIFO.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from nestkit.data.synthetic import noise_like, speech_like, write_wav

RATE = 16000


def speech(folder: Path, name: str, seconds: float = 2.0, seed: int = 0, rate: int = RATE, **kw) -> str:
    return write_wav(folder / name, speech_like(seconds, seed, rate), rate, **kw)


def samples(folder: Path, name: str, data: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> str:
    return write_wav(folder / name, data, rate, subtype)


def truncated_copy(source: str, target: Path, keep_fraction: float = 0.5) -> str:
    data = Path(source).read_bytes()
    target.write_bytes(data[: int(len(data) * keep_fraction)])
    return str(target)


def corrupt_header(source: str, target: Path) -> str:
    data = bytearray(Path(source).read_bytes())
    data[20:36] = b"\xff" * 16  # the 'fmt ' chunk body: format tag, channels, rate, byte rate
    target.write_bytes(bytes(data))
    return str(target)


def write_jsonl(path: Path, lines: list) -> str:
    """Lines are dicts (dumped) or raw strings (written as they are, for malformed lines)."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


def nemo(path: str, duration: float, **extra) -> dict:
    return {"audio_filepath": path, "duration": duration, **extra}


def build_zoo(folder: Path) -> dict:
    """Manifests with one line per finding category that a line or a file can show.

    Returns {"manifests": [...], "noise": [...], "expect": {(manifest, line): category},
    "valid": [(manifest, line), ...], "unreadable": (manifest, line)}: each expected category must
    be among the findings of its line, and valid lines must have none. Run it with
    `--max-duration 3.1` (for too_long), and as a user that file permissions apply to (for unreadable).
    """
    audio = folder / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    ok = speech(audio, "ok.wav", 3.0, seed=1)
    ok_flac = folder / "audio" / "ok.flac"
    sf.write(str(ok_flac), speech_like(3.0, 2), RATE, format="FLAC")
    bad_flac = truncated_copy(str(ok_flac), audio / "cut.flac", 0.4)
    sine = 1.5 * np.sin(2 * np.pi * 440 * np.arange(2 * RATE) / RATE)
    os.symlink("does-not-exist.wav", audio / "broken.wav")
    os.symlink("loop.wav", audio / "loop.wav")
    (audio / "folder.wav").mkdir()
    os.mkfifo(audio / "pipe.wav")
    (audio / "text.wav").write_text("this is not audio\n" * 100)
    nan_data = speech_like(2.0, 3)
    nan_data[8000] = np.nan
    inf_data = speech_like(2.0, 4)
    inf_data[100] = np.inf
    header_only = audio / "header_only.wav"
    header_only.write_bytes(Path(ok).read_bytes()[:44])
    flac_named_wav = audio / "really_flac.wav"
    sf.write(str(flac_named_wav), speech_like(2.0, 5), RATE, format="FLAC")
    locked = speech(audio, "locked.wav", 2.0, seed=9)
    os.chmod(locked, 0)

    lines = [
        (nemo(ok, 3.0), None),  # 1: valid
        (nemo("missing.wav", 2.0), "missing"),
        (nemo(str(audio / "broken.wav"), 2.0), "broken_symlink"),
        (nemo(str(audio / "loop.wav"), 2.0), "symlink_loop"),
        (nemo(str(audio / "folder.wav"), 2.0), "not_regular_file"),  # 5
        (nemo(str(audio / "pipe.wav"), 2.0), "not_regular_file"),
        (nemo(str(audio / "text.wav"), 2.0), "not_audio"),
        (nemo(corrupt_header(ok, audio / "bad_header.wav"), 3.0), "not_audio"),
        (nemo(str(header_only), 1.0), "empty"),
        (nemo(str(flac_named_wav), 2.0), "wrong_extension"),  # 10
        (nemo(speech(audio, "narrow.wav", 2.0, seed=6, rate=8000), 2.0), "needs_resampling"),
        (
            nemo(samples(audio, "stereo.wav", np.stack([speech_like(2.0, 7)] * 2, axis=1)), 2.0),
            "needs_downmix",
        ),
        (nemo(ok, 2.5), "duration_mismatch"),
        (nemo(truncated_copy(ok, audio / "half.wav"), 3.0), "truncated"),
        (nemo(truncated_copy(ok, audio / "half2.wav"), 1.45), "truncated_file"),  # 15
        (nemo(ok, 1.0, offset=5.0), "offset_beyond_end"),
        (nemo(bad_flac, 3.0), "decode_error"),
        (nemo(samples(audio, "nan.wav", nan_data, subtype="FLOAT"), 2.0), "nan_inf"),
        (nemo(samples(audio, "inf.wav", inf_data, subtype="FLOAT"), 2.0), "nan_inf"),
        (nemo(samples(audio, "zeros.wav", np.zeros(2 * RATE, np.float32)), 2.0), "all_zero"),  # 20
        (nemo(samples(audio, "dc.wav", np.full(2 * RATE, 0.25, np.float32)), 2.0), "dc_only"),
        (nemo(samples(audio, "clipped.wav", np.clip(sine, -1, 1).astype(np.float32)), 2.0), "clipping"),
        (nemo(speech(audio, "short.wav", 0.5, seed=8), 0.5), "too_short"),
        (nemo(speech(audio, "long.wav", 3.2, seed=10), 3.2), "too_long"),
        (nemo(ok, 3.0, offset=0.0), "duplicate"),  # 25
        ("", "blank_line"),
        ('{"audio_filepath": "ok.wav", "duration": 2.0', "malformed_json"),
        ({"audio_file": "x.wav", "duration": 1.0}, "missing_field"),
        (nemo(ok, -1.0), "invalid_duration"),
        ('{"audio_filepath": "audio/ok.wav", "duration": NaN}', "invalid_duration"),  # 30
        (nemo(ok, "3.0"), "invalid_duration"),
        (nemo(ok, 0), "invalid_duration"),
        (nemo(ok, 1.0, offset=-1.0), "invalid_offset"),
        ({"audio_filepath": 5, "duration": 1.0}, "invalid_field"),
        ({"audio_filepath": "audio/ok.wav"}, "missing_field"),  # 35
        (nemo(samples(audio, "huge.wav", speech_like(2.0, 15) * 1e30, subtype="FLOAT"), 2.0), "out_of_range"),
        (nemo(locked, 2.0), "unreadable"),  # last: see `unreadable` below
    ]
    train = write_jsonl(folder / "train.json", [line for line, _ in lines])
    expect = {(train, n): cat for n, (_, cat) in enumerate(lines, start=1) if cat}
    unreadable = (train, len(lines))

    # another manifest: its line 1 uses ok.wav too, so its NeMo cut id `ok-L1` collides with train's
    more = write_jsonl(folder / "more.json", [nemo(ok, 2.95)])
    expect[(more, 1)] = "duplicate_id"
    unknown = write_jsonl(folder / "unknown.json", [{"path": "x.wav", "seconds": 1.0}])
    expect[(unknown, 1)] = "unknown_format"
    empty = write_jsonl(folder / "empty.json", [])
    expect[(empty, 0)] = "empty_manifest"
    noise_file = write_wav(audio / "noise.wav", noise_like(3.0, 1))
    segments = (nemo(noise_file, 1.0, offset=round(i * 0.001, 3)) for i in range(400))  # all distinct
    whole = gzip.compress("".join(json.dumps(line) + "\n" for line in segments).encode())
    corrupt = folder / "corrupt.jsonl.gz"
    corrupt.write_bytes(whole[: len(whole) // 2])
    cuts, cut_expect = lhotse_manifest(folder)
    expect.update(cut_expect)

    noises = [
        (nemo(noise_file, 3.0), None),
        (nemo(samples(audio, "quiet_noise.wav", noise_like(3.0, 2) * 1e-4), 3.0), "silent_noise"),
        (nemo(samples(audio, "zero_noise.wav", np.zeros(3 * RATE, np.float32)), 3.0), "silent_noise"),
    ]
    noise = write_jsonl(folder / "noise.json", [line for line, _ in noises])
    expect.update({(noise, n): cat for n, (_, cat) in enumerate(noises, start=1) if cat})
    return {
        "manifests": [train, more, unknown, empty, str(corrupt), cuts],
        "noise": [noise],
        "expect": expect,
        "corrupt": str(corrupt),
        "valid": [(train, 1), (noise, 1), (cuts, 1)],
        "unreadable": unreadable,
    }


def lhotse_manifest(folder: Path, name: str = "cuts.jsonl.gz") -> tuple[str, dict]:
    """A lhotse CutSet with one good cut, one whose file is missing, one longer than its file,
    one with a URL source and one line lhotse cannot deserialize."""
    from lhotse import CutSet, Recording

    audio = folder / "lhotse_audio"
    audio.mkdir(parents=True, exist_ok=True)
    good = Recording.from_file(speech(audio, "good.wav", 2.0, seed=11)).to_cut()
    gone_path = speech(audio, "gone.wav", 2.0, seed=12)
    gone = Recording.from_file(gone_path).to_cut()
    os.remove(gone_path)
    long_rec = Recording.from_file(speech(audio, "long.wav", 2.0, seed=13))
    longer = long_rec.to_cut()
    longer.duration = 3.0
    remote = Recording.from_file(speech(audio, "remote.wav", 2.0, seed=14)).to_cut()
    remote.recording.sources[0].type = "url"
    remote.recording.sources[0].source = "https://example.com/remote.wav"
    remote.id = "remote-cut"
    lines = [c.to_dict() for c in CutSet.from_cuts([good, gone, longer, remote])]
    broken = dict(lines[0], id="broken-cut", recording={"id": "r", "sources": "nonsense"})
    path = write_jsonl(folder / name, lines + [broken])
    expect = {
        (path, 2): "missing",
        (path, 3): "truncated",
        (path, 4): "not_checked",
        (path, 5): "invalid_cut",
    }
    return path, expect


# ------------------------------------------------------------------------------------------------
# The real CLI


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


def _command_name() -> list[str]:
    """While validate-manifest is the only command registered, Typer runs it as the whole app (no
    command name); this keeps the tests right before and after other commands are registered."""
    from typer.main import get_command

    from nestkit.cli import app

    return [] if not hasattr(get_command(app), "commands") else ["validate-manifest"]


def run_cli(
    *args: str,
    env: dict | None = None,
    cwd: str | None = None,
    prefix: list[str] | None = None,
    process: bool = False,
    timeout: float = 120,
) -> Completed:
    """`nestkit validate-manifest ARGS`: in this process through Typer's CliRunner (fast: lhotse is
    imported once), or with `process=True` (or a `prefix`) as a new process through `nestkit.cli:main`,
    the installed entry point's code. Either way the file checks run in real worker processes."""
    if process or prefix:
        command = [sys.executable, "-c", "from nestkit.cli import main; main()", *_command_name(), *args]
        done = subprocess.run(
            (prefix or []) + command,
            capture_output=True,
            text=True,
            check=False,
            env=dict(os.environ, **(env or {})),
            timeout=timeout,
            cwd=cwd,
        )
        return Completed(done.returncode, done.stdout, done.stderr)
    from typer.testing import CliRunner

    from nestkit.cli import app

    before = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        result = CliRunner().invoke(app, [*_command_name(), *args], env=env, catch_exceptions=False)
    finally:
        os.chdir(before)
    return Completed(result.exit_code, result.stdout, result.stderr)


def run_json(*args: str, **kw) -> tuple[Completed, dict]:
    done = run_cli(*args, "--format", "json", **kw)
    assert done.stdout, done.stderr
    return done, json.loads(done.stdout)


def found(report: dict) -> dict[tuple[str, int], set[str]]:
    by_line: dict[tuple[str, int], set[str]] = {}
    for f in report["findings"]:
        by_line.setdefault((f["manifest"], f["line"]), set()).add(f["category"])
    return by_line


def without_capabilities_prefix() -> list[str] | None:
    """A command prefix that makes root obey file permissions (drops CAP_DAC_*), or None if impossible."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    caps = "-dac_override,-dac_read_search"
    prefix = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]
    probe = subprocess.run(prefix + ["true"], capture_output=True, check=False)
    return prefix if probe.returncode == 0 else None
