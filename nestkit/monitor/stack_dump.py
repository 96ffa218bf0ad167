"""Python stacks of a rank's process (every thread) and of its DataLoader workers, with file:line.

The rank's own threads come from `sys._current_frames()` (named, with source lines). A worker is
asked through SIGUSR1, on which `worker_init` registered faulthandler: faulthandler's C-level
handler prints every thread's stack even while the worker is blocked in a system call, appending
to `<run_dir>/stacks/rank<R>-worker<W>.txt`; we read what was appended. py-spy, when installed,
adds a second view (it may need ptrace permission; its absence or failure is recorded, not fatal).
"""

from __future__ import annotations

import linecache
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nestkit.monitor.worker_init import DUMP_SIGNAL
from nestkit.runfolder.layout import worker_stack_path


@dataclass
class Frame:
    file: str
    line: int
    function: str
    code: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"


@dataclass
class ThreadStack:
    name: str
    ident: int | str
    frames: list[Frame] = field(default_factory=list)  # innermost first, as faulthandler prints them
    current: bool = False  # faulthandler's "Current thread": the one that received the signal

    def as_dict(self) -> dict:
        return asdict(self)


def own_threads() -> list[ThreadStack]:
    """Every thread of this process, innermost frame first."""
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident() if threading.current_thread().name == "nestkit-watchdog" else None
    stacks = []
    for ident, frame in sys._current_frames().items():
        if ident == me:
            continue  # the dumping watchdog thread itself (a data timeout dumps from the training thread: kept)
        frames = []
        while frame is not None:
            code = frame.f_code
            line = frame.f_lineno or 0
            frames.append(
                Frame(code.co_filename, line, code.co_name, linecache.getline(code.co_filename, line).strip())
            )
            frame = frame.f_back
        stacks.append(ThreadStack(names.get(ident, "?"), ident, frames))
    stacks.sort(key=lambda s: (s.name != "MainThread", s.name))
    return stacks


def format_threads(stacks: list[ThreadStack], title: str) -> str:
    lines = [f"# {title}"]
    for stack in stacks:
        lines.append(f"\nThread {stack.name} ({stack.ident}), most recent call first:")
        for f in stack.frames:
            lines.append(f'  File "{f.file}", line {f.line} in {f.function}')
            if f.code:
                lines.append(f"    {f.code}")
    return "\n".join(lines) + "\n"


_THREAD_RE = re.compile(r"^(Current thread|Thread) (0x[0-9a-f]+)")
_FRAME_RE = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$')


def parse_faulthandler(text: str) -> list[ThreadStack]:
    """Threads and frames of a faulthandler dump."""
    stacks: list[ThreadStack] = []
    for line in text.splitlines():
        head = _THREAD_RE.match(line)
        if head:
            stacks.append(ThreadStack(head.group(2), head.group(2), [], current=head.group(1) == "Current thread"))
            continue
        frame = _FRAME_RE.match(line)
        if frame and stacks:
            stacks[-1].frames.append(Frame(frame.group(1), int(frame.group(2)), frame.group(3)))
    return stacks


def signal_worker(pid: int, stack_file: Path, wait_s: float = 3.0) -> str | None:
    """Ask worker `pid` for its stacks (SIGUSR1 -> faulthandler) and return what it wrote."""
    before = stack_file.stat().st_size if stack_file.exists() else 0
    try:
        os.kill(pid, DUMP_SIGNAL)
    except OSError:
        return None
    deadline = time.monotonic() + wait_s
    text = ""
    while time.monotonic() < deadline:
        time.sleep(0.1)
        size = stack_file.stat().st_size if stack_file.exists() else 0
        if size > before:
            time.sleep(0.2)  # let faulthandler finish writing every thread
            with open(stack_file, "rb") as f:
                f.seek(before)
                text = f.read().decode(errors="replace")
            break
    return text or None


def worker_stacks(run_dir: Path, rank: int, workers: list[dict]) -> dict[int, str | None]:
    """worker id -> its faulthandler dump (None when it did not answer: dead, or not a nestkit worker)."""
    return {w["worker"]: signal_worker(w["pid"], worker_stack_path(run_dir, rank, w["worker"])) for w in workers}


def py_spy_path() -> str | None:
    return shutil.which("py-spy")


def py_spy(pid: int, timeout_s: float = 20.0) -> str | None:
    """`py-spy dump --pid` output, an explanation when it fails, or None when py-spy is absent."""
    exe = py_spy_path()
    if exe is None:
        return None
    try:
        result = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"py-spy dump --pid {pid}: no answer within {timeout_s:g} s\n"
    if result.returncode != 0:
        return f"py-spy dump --pid {pid} failed (exit {result.returncode}): {result.stderr.strip()}\n"
    return result.stdout


def _is_nestkit(path: str) -> bool:
    return "/nestkit/" in path and "/site-packages/" not in path


def _is_entry_point(path: str) -> bool:
    """nestkit frames that only say "training was started": never what a process is doing."""
    return path.endswith(("/nestkit/training/run.py", "/nestkit/cli.py")) or "/nestkit/commands/" in path


VIA_DEPTH = 12  # a nestkit frame deeper than this called into a library long ago: not informative


def key_frame(stacks: list[ThreadStack]) -> str | None:
    """Where a process is stuck, as `file:line in function`: the innermost frame of the thread that
    reads audio if any (a bounded read runs in a helper thread), else of the main/current thread;
    followed by `(via <nestkit frame>)` when the innermost frame is library code and nestkit code
    called it from close by."""

    def reading(stack: ThreadStack) -> bool:
        return any(f.file.endswith(("nestkit/data/loading.py", "nestkit/core/faults.py")) for f in stack.frames[:8])

    preferred = (
        [s for s in stacks if reading(s)] or [s for s in stacks if s.current or s.name == "MainThread"] or stacks
    )
    if not preferred or not preferred[0].frames:
        return None
    frames = preferred[0].frames
    text = _short(frames[0])
    if not _is_nestkit(frames[0].file):
        via = next((f for f in frames[1:VIA_DEPTH] if _is_nestkit(f.file) and not _is_entry_point(f.file)), None)
        if via is not None:
            text += f" (via {_short(via)})"
    return text


def _short(frame: Frame) -> str:
    """A frame with its path cut to what identifies it: `torch/utils/data/dataloader.py:1290 in _get_data`."""
    path = frame.file
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        if _is_nestkit(path):
            path = "nestkit/" + path.rsplit("/nestkit/", 1)[1]
        elif "/lib/python3" in path:
            path = path.rsplit("/", 1)[1]
    return f"{path}:{frame.line} in {frame.function}"
