"""A training job under test: `nestkit train` in its own session, watched from outside.

The session holds everything the job started (Lightning's launcher = rank 0, the other ranks,
their DataLoader workers, the node monitor), so "the job never outlives its own abort" is: no
live process is left in the session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson


class Job:
    def __init__(self, config: str, cwd: Path, env: dict | None = None, args: tuple[str, ...] = ()):
        self.log_path = cwd / f"{Path(config).stem}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nestkit.cli", "train", config, *args],
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
        self.ended_at: float | None = None

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def live_pids(self) -> list[int]:
        """Processes of the job's session that still run (zombies are done: only unreaped)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.process.pid and fields[0] not in ("Z", "X"):  # field 6: session id
                pids.append(int(entry))
        return pids

    def wait_until(self, condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            assert self.process.poll() is None or self.live_pids(), (
                f"the job ended before {what}:\n{self.output[-3000:]}"
            )
            time.sleep(0.2)
        raise AssertionError(f"no {what} within {timeout:g} s:\n{self.output[-3000:]}")

    def wait_ended(self, timeout: float) -> float:
        """Wall time at which the last process of the session was gone."""
        deadline = time.monotonic() + timeout
        while self.live_pids():
            if time.monotonic() > deadline:
                left = self.live_pids()
                self.kill()
                raise AssertionError(f"the job outlived {timeout:g} s (processes {left}):\n{self.output[-3000:]}")
            time.sleep(0.2)
        self.process.wait()
        self.ended_at = time.time()
        self._log.close()
        return self.ended_at

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self._log.close()


def heartbeat(run: Path, rank: int) -> dict | None:
    """The rank's heartbeat, as every nestkit reader sees it (the pulse included)."""
    from nestkit.runfolder.heartbeats import read_heartbeats

    return read_heartbeats(run).get(rank)


def steps_done(run: Path, world: int) -> int:
    beats = [heartbeat(run, r) for r in range(world)]
    return min((b or {}).get("steps_done", 0) for b in beats)


def jsonl(path: Path) -> list[dict]:
    """Every line of a JSON-lines file as a record (strict: a torn line fails the test); [] if absent."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
