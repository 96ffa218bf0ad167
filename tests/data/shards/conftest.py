"""Fixtures for the shard tests: a real HTTP server process with byte ranges, and a closed port."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nestkit.data.shards.ranged import RetryPolicy

SERVER = Path(__file__).with_name("range_server.py")

# Tight bounds so that every failure test finishes in about a second.
FAST = RetryPolicy(
    attempts=3, connect_timeout_s=1.0, read_timeout_s=0.4, attempt_deadline_s=2.0, backoff_s=0.05, backoff_max_s=0.2
)


class RangeServer:
    def __init__(self, root: Path):
        self.root = root
        self.proc = subprocess.Popen([sys.executable, str(SERVER), str(root)], stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.base = f"http://127.0.0.1:{self.port}"

    def url(self, path: Path | str, mode: str = "") -> str:
        rel = Path(path).relative_to(self.root).as_posix() if Path(path).is_absolute() else str(path)
        return f"{self.base}/{mode + '/' if mode else ''}{rel}"

    def stats(self) -> dict[str, int]:
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.base}/_stats", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.kill()  # our own child, by its handle
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def http_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def server(http_root):
    srv = RangeServer(http_root)
    yield srv
    srv.stop()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(autouse=True)
def index_cache(tmp_path, monkeypatch):
    """Indexes of URLs go to a cache folder: keep the tests' out of the user's home."""
    monkeypatch.setenv("NESTKIT_INDEX_CACHE", str(tmp_path / "index-cache"))
    return tmp_path / "index-cache"
