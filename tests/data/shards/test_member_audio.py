"""Decoding one member: the same rules as loose files (segment, downmix, resample, bad audio), local and HTTP."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from nestkit.core.errors import AudioLoadError
from nestkit.data.audio import read_audio
from nestkit.data.shards.member_audio import decode_member, load_member_audio
from nestkit.data.shards.shar import discover_shar, match_cuts, read_shar_cuts
from nestkit.data.shards.tar_index import MemberAddress, build_index

from .conftest import FAST
from .corpus import encoded, lhotse_shar, make_tar, make_wavs, tone


def test_member_decodes_like_the_loose_file(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(str(wav), tone(1.0, 3, 8000, channels=2), 8000, subtype="FLOAT")
    data = wav.read_bytes()
    for args in [(), (0.25, 0.5), (0.0, None, 1)]:
        expected = read_audio(str(wav), *args[:2], 16000, *args[2:]) if args else read_audio(str(wav), target_sr=16000)
        got = decode_member(data, "shard.tar[a.wav]", 16000, *args)
        assert got.dtype == np.float32 and np.array_equal(got, expected)
    assert decode_member(data, "x", 16000).shape == (16000,)  # 1 s at 8 kHz, averaged to mono, resampled


def test_shar_member_matches_the_source_audio(tmp_path):
    wavs = make_wavs(tmp_path / "wav", 2, seconds=0.4)
    lhotse_shar(tmp_path / "shar", wavs, shard_size=10)
    shard = discover_shar(str(tmp_path / "shar")).shards[0]
    cuts, _ = match_cuts(shard, read_shar_cuts(shard.cuts), build_index(shard.fields["recording"]))
    for cut, wav in zip(cuts, wavs):
        got = load_member_audio(cut.data, 16000, duration=cut.duration)
        expected = read_audio(wav)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4  # flac stores 16-bit PCM


def test_bad_member_audio_names_the_member(tmp_path):
    path = make_tar(
        tmp_path / "audio_0.tar",
        [
            ("good.wav", encoded(tone(0.2, 1), fmt="WAV")),
            ("bad.wav", b"RIFF this is not audio at all" * 10),
            ("silent.wav", encoded(np.zeros(1600, np.float32), fmt="WAV")),
        ],
    )
    index = build_index(path)
    assert load_member_audio(index.address("good.wav")).shape == (3200,)
    with pytest.raises(AudioLoadError) as err:
        load_member_audio(index.address("bad.wav"))
    assert err.value.category == "not_audio" and str(err.value).startswith(f"audio {path}[bad.wav]@")
    with pytest.raises(AudioLoadError) as err:
        load_member_audio(index.address("silent.wav"), require_signal=True)
    assert err.value.category == "all_zero"
    with pytest.raises(AudioLoadError) as err:
        load_member_audio(index.address("good.wav"), offset=0.1, duration=0.5)
    assert err.value.category == "truncated" and "/proc/self/fd" not in str(err.value)


def test_member_over_http_and_unreachable(server, http_root, closed_port):
    path = make_tar(http_root / "audio_3.tar", [("a.wav", encoded(tone(0.3, 2), fmt="WAV"))])
    local = build_index(path).address("a.wav")
    remote = MemberAddress(server.url(path), local.name, local.offset, local.size)
    assert np.array_equal(load_member_audio(remote, policy=FAST), load_member_audio(local))
    dead = MemberAddress(f"http://127.0.0.1:{closed_port}/audio_3.tar", local.name, local.offset, local.size)
    with pytest.raises(AudioLoadError) as err:
        load_member_audio(dead, policy=FAST)
    assert err.value.category == "unreadable" and "3 attempt(s)" in str(err.value)
    stalled = MemberAddress(server.url(path, "stall/10"), local.name, local.offset, local.size)
    with pytest.raises(AudioLoadError) as err:
        load_member_audio(stalled, policy=FAST)
    assert err.value.category == "timeout"
