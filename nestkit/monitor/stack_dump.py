"""Python stacks of a rank's process (every thread) and of its DataLoader workers, with file:line.

The rank's own threads come from `sys._current_frames()` (named, with source lines). A worker is
asked through SIGUSR1, on which `worker_init` registered faulthandler: faulthandler's C-level
handler prints every thread's stack even while the worker is blocked in a system call, appending
to `<run_dir>/stacks/rank<R>-worker<W>.txt`; we read what was appended. py-spy, when installed,
adds a second view (it may need ptrace permission; its absence or failure is recorded, not fatal).
Light: no torch, so the node monitor can use it.
"""

from __future__ import annotations

import linecache
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

from nestkit.runfolder.layout import worker_stack_path

DUMP_SIGNAL = signal.SIGUSR1  # a DataLoader worker writes its stacks on it (see worker_init)


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
    stacks: list[ThreadStack] = []
    for ident, top in sys._current_frames().items():
        if ident == me:
            continue  # the dumping watchdog thread itself (a data timeout dumps from the training thread: kept)
        frames = []
        frame: FrameType | None = top
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


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # not created (the worker could not make it on a full disk)
        return 0


def signal_worker(pid: int, stack_file: Path, wait_s: float = 3.0) -> str | None:
    """Ask worker `pid` for its stacks (SIGUSR1 -> faulthandler) and return what it wrote (None:
    dead, not a nestkit worker, or its stack file could not take the dump)."""
    before = _size(stack_file)
    try:
        os.kill(pid, DUMP_SIGNAL)
    except OSError:
        return None
    deadline = time.monotonic() + wait_s
    text = ""
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if _size(stack_file) > before:
            time.sleep(0.2)  # let faulthandler finish writing every thread
            try:
                with open(stack_file, "rb") as f:
                    f.seek(before)
                    text = f.read().decode(errors="replace")
            except OSError:
                text = ""
            break
    return text or None


def worker_stacks(run_dir: Path, rank: int, workers: list[dict], wait_s: float = 3.0) -> dict[int, str | None]:
    """worker id -> its faulthandler dump (None when it did not answer: dead, stopped, or not a
    nestkit worker). Asked in parallel: a silent worker costs `wait_s` once, not once each."""
    from concurrent.futures import ThreadPoolExecutor

    if not workers:
        return {}
    with ThreadPoolExecutor(max_workers=len(workers), thread_name_prefix="nestkit-stacks") as pool:
        asked = {
            w["worker"]: pool.submit(signal_worker, w["pid"], worker_stack_path(run_dir, rank, w["worker"]), wait_s)
            for w in workers
        }
        return {worker: future.result() for worker, future in asked.items()}


def py_spy_path() -> str | None:
    """py-spy on PATH, or installed beside this Python (a virtual environment that is not activated)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None)


def py_spy(pid: int, timeout_s: float = 10.0) -> str | None:
    """`py-spy dump --nonblocking --pid` output, an explanation when it fails, or None when py-spy
    is absent. Non-blocking: it reads the process's memory without pausing it, so it works on a
    process that holds the GIL or is stopped, and leaves it exactly as it was."""
    exe = py_spy_path()
    if exe is None:
        return None
    command = [exe, "dump", "--nonblocking", "--pid", str(pid)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"py-spy dump --pid {pid}: no answer within {timeout_s:g} s\n"
    except OSError as exc:
        return f"py-spy dump --pid {pid}: cannot run {exe} ({exc.strerror or exc})\n"
    if result.returncode != 0:
        return f"py-spy dump --pid {pid} failed (exit {result.returncode}): {result.stderr.strip()}\n"
    return result.stdout


_PY_SPY_THREAD_RE = re.compile(r'^Thread (\S+) \(([^)]*)\)(?:: "(.*)")?')
_PY_SPY_FRAME_RE = re.compile(r"^\s+(\S.*) \((.*):(\d+)\)$")


def parse_py_spy(text: str) -> list[ThreadStack]:
    """Threads and frames of a `py-spy dump` (innermost first); the thread holding the GIL is `current`."""
    stacks: list[ThreadStack] = []
    for line in text.splitlines():
        head = _PY_SPY_THREAD_RE.match(line)
        if head:
            stacks.append(
                ThreadStack(head.group(3) or head.group(1), head.group(1), [], current="gil" in head.group(2))
            )
            continue
        frame = _PY_SPY_FRAME_RE.match(line)
        if frame and stacks:
            stacks[-1].frames.append(Frame(frame.group(2), int(frame.group(3)), frame.group(1)))
    return stacks


def _is_nestkit(path: str) -> bool:
    """nestkit's own code: an absolute path (faulthandler, our dumps) or py-spy's short one."""
    return ("/nestkit/" in path or path.startswith("nestkit/")) and "site-packages/" not in path


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
        if _is_nestkit(path) and "/nestkit/" in path:
            path = "nestkit/" + path.rsplit("/nestkit/", 1)[1]
        elif "/lib/python3" in path:
            path = path.rsplit("/", 1)[1]
    return f"{path}:{frame.line} in {frame.function}"
