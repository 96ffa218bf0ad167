"""What a data-loading process is doing right now: which cut, file and manifest line, since when.

Python stack dumps show *where* a DataLoader worker is blocked (`read_audio`, line 120) but not
*which file*: frames do not print their locals. So every loading process keeps a tiny status
record that the load path updates before each read: one 4 KiB file per worker,
`<run_dir>/heartbeat/rank<R>-worker<W>.status` (`rank<R>-main.status` when the rank loads in its
own process), memory-mapped, so an update is a memcpy into the page cache -- no syscall, about a
microsecond -- and stays readable by the watchdog and by `nestkit stacks` even while the worker
is blocked, and after it is killed.

The page is reserved when the slot is created, so updates need no space: they keep working on a
full disk (the heartbeat's pulse uses the same record for that reason).

Record layout: two buffers, written alternately, each [sequence u64][length u32][crc32 u32][JSON
body]; the CRC covers the sequence number and the body. A reader takes the valid buffer with the
higher sequence number: a record torn by a concurrent write fails its CRC and is skipped, and the
other buffer -- the previous record -- is intact, so a reader is never torn and never starved, with
no lock and no atomic instruction (Python has neither across processes).
"""

from __future__ import annotations

import mmap
import os
import struct
import time
import zlib
from pathlib import Path

import orjson

from nestkit.runfolder.layout import process_name

SLOT_SIZE = 4096
_HEADER = struct.Struct("<QII")  # sequence number, body length, CRC-32 of both
_BUFFERS = (0, SLOT_SIZE // 2)
_MAX_BODY = SLOT_SIZE // 2 - _HEADER.size
_MAX_TEXT = 640  # a path longer than this is cut, so a record always fits its buffer

STATUS_SUFFIX = ".status"


def slot_path(heartbeat_dir: str | os.PathLike, rank: int, worker: int | None, role: str = "") -> Path:
    return Path(heartbeat_dir) / f"{process_name(rank, worker, role)}{STATUS_SUFFIX}"


class StatusSlot:
    """The writer side: one process, one slot."""

    def __init__(self, path: Path, identity: dict):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            # reserve the page now: a sparse page is allocated on the first store into the mapping,
            # and on a full file system that store kills the process with SIGBUS. Reserved, every
            # later update works however full the disk gets (OSError here: the caller warns).
            os.posix_fallocate(fd, 0, SLOT_SIZE)
            self._map = mmap.mmap(fd, SLOT_SIZE)
        finally:
            os.close(fd)
        self._seq = 0
        self.identity = identity
        self.batch: dict | None = None  # {"epoch", "batch"} of the batch being built
        self.batch_since = 0.0
        self.context = "idle"  # what the process does between reads: idle, building, augmenting

    def write(self, record: dict) -> None:
        body = orjson.dumps(record)
        if len(body) > _MAX_BODY:
            body = orjson.dumps({k: v for k, v in record.items() if k not in ("path", "manifest")})
        if len(body) > _MAX_BODY:  # never a torn or oversized record: the identity alone, marked
            body = orjson.dumps({**self.identity, "truncated": True, "since": record.get("since")})
        self._seq += 1
        at = _BUFFERS[self._seq % 2]
        self._map[at + _HEADER.size : at + _HEADER.size + len(body)] = body
        _HEADER.pack_into(self._map, at, self._seq, len(body), _crc(self._seq, body))

    def record(self, state: str, **extra) -> dict:
        return {
            **self.identity,
            "state": state,
            "since": time.time(),
            "batch": self.batch,
            "batch_since": self.batch_since,
            **extra,
        }


_slot: StatusSlot | None = None


def install(path: str | os.PathLike, **identity) -> None:
    """Make this process report into `path` (a DataLoader worker at start, or a rank that loads in
    its own process). Identity fields (rank, worker, pid) are repeated in every record."""
    global _slot
    _slot = StatusSlot(Path(path), {"pid": os.getpid(), **identity})
    _slot.write(_slot.record("idle"))


def uninstall() -> None:
    """Stop reporting (a forked validation worker must not write into its parent's slot)."""
    global _slot
    _slot = None


def begin_batch(epoch: int, batch: int) -> None:
    slot = _slot
    if slot is None:
        return
    slot.batch = {"epoch": epoch, "batch": batch}
    slot.batch_since = time.time()
    slot.context = "building"
    slot.write(slot.record("building"))


def set_context(state: str) -> None:
    """`augmenting` after the utterances are read (noise reads then report on their own)."""
    slot = _slot
    if slot is None:
        return
    slot.context = state
    slot.write(slot.record(state))


def end_batch() -> None:
    slot = _slot
    if slot is None:
        return
    slot.context = "idle"
    last, slot.batch = slot.batch, None
    slot.write(slot.record("idle", last_batch=last))


def loading(cut_id: str, path: str, manifest: str | None, line: int | None) -> None:
    """Called right before a read: the record names what a blocked read is blocked on."""
    slot = _slot
    if slot is None:
        return
    slot.write(
        slot.record(
            "loading",
            cut_id=cut_id,
            path=path[:_MAX_TEXT],
            manifest=manifest[:_MAX_TEXT] if manifest else manifest,
            line=line,
        )
    )


def loaded() -> None:
    """The read returned: back to what the process was doing around it."""
    slot = _slot
    if slot is None:
        return
    slot.write(slot.record(slot.context))


def active() -> bool:
    return _slot is not None


def loader_rank() -> int | None:
    """The rank whose training data this process loads (None outside a rank's loader)."""
    slot = _slot
    return slot.identity.get("rank") if slot is not None and not slot.identity.get("role") else None


# ------------------------------------------------------------------------------------------------
# Reader side


def _crc(seq: int, body: bytes) -> int:
    return zlib.crc32(body, zlib.crc32(seq.to_bytes(8, "little")))


def read_slot(path: str | os.PathLike, tries: int = 100) -> dict | None:
    """The latest complete record in `path`, or None (no file, or never written)."""
    try:
        with open(path, "rb") as f:
            for _ in range(tries):
                f.seek(0)
                page = f.read(SLOT_SIZE)
                if len(page) < SLOT_SIZE:
                    return None
                valid = []
                for at in _BUFFERS:
                    seq, length, crc = _HEADER.unpack_from(page, at)
                    body = page[at + _HEADER.size : at + _HEADER.size + length]
                    if seq and length <= _MAX_BODY and _crc(seq, body) == crc:
                        valid.append((seq, body))
                if valid:
                    record = orjson.loads(max(valid)[1])
                    return record if isinstance(record, dict) else None
                if not any(_HEADER.unpack_from(page, at)[0] for at in _BUFFERS):
                    return None  # created, never written
                time.sleep(0.0001)  # both buffers caught mid-write: try again
    except OSError:
        return None
    return None


def read_slots(heartbeat_dir: str | os.PathLike, rank: int) -> list[dict]:
    """Every status record of `rank`'s loading processes, with `slot` naming its file."""
    records = []
    for path in sorted(Path(heartbeat_dir).glob(f"rank{rank}-*{STATUS_SUFFIX}")):
        record = read_slot(path)
        if record is not None:
            records.append({**record, "slot": path.stem.split("-", 1)[1]})
    return records
