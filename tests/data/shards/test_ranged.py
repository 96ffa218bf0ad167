"""Ranged reads and stat, local and over a real HTTP server, with the failures that must not hang."""

from __future__ import annotations

import os
import time

import pytest

from nestkit.data.shards.ranged import SequentialReader, ShardReadError, read_range, read_whole, stat_shard

from .conftest import FAST


@pytest.fixture(scope="module")
def blob(http_root):
    data = os.urandom(300_000)
    path = http_root / "blob.bin"
    path.write_bytes(data)
    return path, data


def test_local_and_http_read_the_same_bytes(server, blob):
    path, data = blob
    for where in (str(path), server.url(path)):
        assert read_range(where, 12345, 1000, FAST) == data[12345:13345]
        assert read_range(where, 0, len(data), FAST) == data
        assert read_whole(where, FAST) == data


def test_stat_local_and_http(server, blob):
    path, data = blob
    local = stat_shard(str(path))
    assert local.size == len(data) and local.mtime_ns == os.stat(path).st_mtime_ns
    remote = stat_shard(server.url(path), FAST)
    assert remote.size == len(data) and remote.etag and remote.last_modified
    # a server that refuses HEAD (signed URLs do): the size comes from a one-byte GET
    assert stat_shard(server.url(path, "nohead"), FAST).size == len(data)


def test_range_past_the_end_is_named_not_retried(server, blob):
    path, data = blob
    for where in (str(path), server.url(path)):
        with pytest.raises(ShardReadError) as err:
            read_range(where, len(data) - 10, 100, FAST)
        assert err.value.category == "out_of_range" and err.value.attempts == 1
        assert where in str(err.value)


def test_missing_file_and_url(server, tmp_path):
    with pytest.raises(ShardReadError) as err:
        read_range(str(tmp_path / "nope.tar"), 0, 10, FAST)
    assert err.value.category == "missing"
    with pytest.raises(ShardReadError) as err:
        read_range(server.url("nope.tar"), 0, 10, FAST)
    assert err.value.category == "missing" and "404" in str(err.value) and err.value.attempts == 1


def test_fifo_is_refused_without_opening(tmp_path):
    fifo = tmp_path / "pipe.tar"
    os.mkfifo(fifo)
    with pytest.raises(ShardReadError) as err:
        read_range(str(fifo), 0, 10, FAST)
    assert err.value.category == "not_regular_file"


def test_server_that_ignores_range_is_refused(server, blob):
    path, _ = blob
    with pytest.raises(ShardReadError) as err:
        read_range(server.url(path, "norange"), 100, 10, FAST)
    assert err.value.category == "no_range_support" and "206" in str(err.value)


def test_closed_port_fails_fast_with_a_named_error(closed_port):
    url = f"http://127.0.0.1:{closed_port}/audio_0.tar"
    started = time.monotonic()
    with pytest.raises(ShardReadError) as err:
        read_range(url, 0, 10, FAST)
    took = time.monotonic() - started
    assert err.value.category == "unreachable" and err.value.attempts == FAST.attempts
    assert url in str(err.value) and "3 attempts" in str(err.value)
    assert took < 2.0


def test_stalled_response_times_out_retries_and_names_it(server, blob):
    path, _ = blob
    url = server.url(path, "stall/100")
    started = time.monotonic()
    with pytest.raises(ShardReadError) as err:
        read_range(url, 0, 50_000, FAST)
    took = time.monotonic() - started
    assert err.value.category == "timeout" and err.value.attempts == FAST.attempts
    assert "stalled" in str(err.value) and url in str(err.value)
    # 3 attempts x 0.4 s read timeout + backoff 0.05 + 0.1: bounded, never a hang
    assert took < 3 * FAST.read_timeout_s + 1.5


def test_server_that_never_answers_times_out(server, blob):
    path, _ = blob
    started = time.monotonic()
    with pytest.raises(ShardReadError) as err:
        stat_shard(server.url(path, "hang"), FAST)
    assert err.value.category == "timeout"
    assert time.monotonic() - started < 3 * FAST.read_timeout_s + 1.5


def test_trickling_server_hits_the_attempt_deadline(server, blob):
    path, _ = blob
    policy = FAST.__class__(**{**FAST.__dict__, "attempts": 1, "attempt_deadline_s": 0.5})
    started = time.monotonic()
    with pytest.raises(ShardReadError) as err:
        read_range(server.url(path, "trickle"), 0, 1000, policy)
    assert err.value.category == "timeout" and "longer than 0.5 s" in str(err.value)
    assert time.monotonic() - started < 0.5 + FAST.read_timeout_s + 0.5


def test_flaky_server_succeeds_on_retry(server, blob):
    path, data = blob
    assert read_range(server.url(path, "flaky/2"), 10, 20, FAST) == data[10:30]


def test_sequential_reader_resumes_a_broken_stream(server, blob):
    path, data = blob
    # the stream stalls after 70000 bytes on every request; each resume starts where it stopped
    reader = SequentialReader(server.url(path, "stall/70000"), len(data), FAST)
    got, pos = [], 0
    with reader:
        while pos < len(data):
            chunk = reader.read(pos, 50_000)
            got.append(chunk)
            pos += len(chunk)
    assert b"".join(got) == data
    assert reader.requests >= 5  # 300000 / 70000: resumed with Range: bytes=pos-


def test_sequential_reader_skips_forward(server, blob):
    path, data = blob
    for where in (str(path), server.url(path)):
        with SequentialReader(where, len(data), FAST) as reader:
            assert reader.read(10, 5) == data[10:15]
            assert reader.read(200_000, 512) == data[200_000:200_512]
            assert reader.read(299_990, 512) == data[299_990:]
            with pytest.raises(ValueError):
                reader.read(0, 1)


def test_watched_walk_ends_when_reads_stop():
    import threading

    from nestkit.data.shards.ranged import watched

    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(ShardReadError) as err:
        watched(lambda: release.wait(30), lambda: 0, "/mnt/stalled/audio_0.tar", 0.3)  # a read that never returns
    release.set()
    assert err.value.category == "timeout" and "/mnt/stalled/audio_0.tar" in str(err.value)
    assert time.monotonic() - started < 1.0
    ticks = iter(range(1000))
    assert watched(lambda: time.sleep(0.5) or "done", lambda: next(ticks), "x", 0.2) == "done"  # slow, moving


def test_ranged_reads_keep_their_connection_alive(server, blob):
    """One connection for many member reads (a new TCP connection per sample would double its cost),
    and a server that closes connections is simply reconnected to."""
    import threading

    path, data = blob
    url = server.url(path)
    result: dict = {}

    def reads(where: str) -> None:  # a thread of its own: connections are kept per thread
        before = server.stats().get("_connections", 0)
        for i in range(20):
            assert read_range(where, 1000 * i, 5000, FAST) == data[1000 * i : 1000 * i + 5000]
        result[where] = server.stats().get("_connections", 0) - before - 1  # the second /_stats request

    for where in (url, server.url(path, "close")):
        thread = threading.Thread(target=reads, args=(where,))
        thread.start()
        thread.join()
    assert result[url] == 1
    assert result[server.url(path, "close")] == 20
