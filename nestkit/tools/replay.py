"""`replay-batch`: rebuild one batch in this process, time every sample, optionally run its step.

Each planned sample is first loaded alone with the training loader and a timeout, and timed; then
the batch is built by the training dataset (same plan, same draws, same substitutes) and its
fingerprint compared with the one the run logged. A sample
that fails or times out is reported by name and gets a self-contained repro folder: its one-line
manifest, a config that replays just that cut, and the command. `--forward` runs the training
step itself (same masks, dither and dropout seeds as training) and names the first module whose
activations or gradients are not finite.
"""

from __future__ import annotations

import copy
import json
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from nestkit.config import save_config
from nestkit.core.errors import AudioLoadError, NestkitError
from nestkit.data.batch import NestBatch
from nestkit.data.index_io import FORMAT_SHAR
from nestkit.data.loading import load_cut
from nestkit.data.pipeline import dataset_config
from nestkit.data.shards.member_audio import policy_within, read_member
from nestkit.data.shards.ranged import ShardReadError
from nestkit.data.shards.tar_index import MemberAddress
from nestkit.tools.positions import Place, logged
from nestkit.tools.session import DebugSession


@dataclass
class SampleReport:
    slot: int
    planned_cut: str
    used_cut: str | None  # what the batch holds in this slot (a substitute when the cut failed)
    manifest: str | None
    line: int | None
    path: str
    load_ms: float
    status: str  # "ok" or the failure category (LOAD_FAILURES), "timeout" included
    reason: str | None = None


@dataclass
class ForwardReport:
    step: int
    loss: float
    masked_frames: int
    checkpoint: str | None
    checkpoint_step: int | None
    logged_loss: float | None
    nonfinite: str | None  # where NaN/Inf first appeared, or None
    grad_norm: float | None


@dataclass
class ReplayReport:
    place: Place  # epoch, rank, the rank's batch number, the micro-batch's index, step
    world_size: int  # of the segment that trained it
    fingerprint: str | None  # None when the batch could not be built (see batch_error)
    logged: dict | None
    samples: list[SampleReport]
    batch_error: str | None = None
    forward: ForwardReport | None = None
    repro_dirs: list[str] = field(default_factory=list)
    audio_files: list[str] = field(default_factory=list)  # --audio: per row clean/noise/noisy WAVs, and the picture

    @property
    def matches_log(self) -> bool | None:
        if self.logged is None or self.fingerprint is None:
            return None
        return self.logged["fingerprint"] == self.fingerprint

    @property
    def failed(self) -> list[SampleReport]:
        return [s for s in self.samples if s.status != "ok"]

    @property
    def rank(self) -> int:
        return self.place.rank

    def as_dict(self) -> dict:
        out = asdict(self)
        out["matches_log"] = self.matches_log
        return out


def time_samples(session: DebugSession, place: Place) -> list[SampleReport]:
    """Load every planned cut alone, with the training loader and its timeout, and time it."""
    sample_rate = session.pipeline.dataset.sample_rate
    timeout_s = dataset_config(session.cfg, "train").sample_timeout_s or None
    reports = []
    for planned, cut in zip(session.planned(place), session.cuts(place)):
        started = time.perf_counter()
        status, reason = "ok", None
        try:
            load_cut(cut, sample_rate, timeout_s, require_signal=True)  # as the dataset loads utterances
        except AudioLoadError as exc:
            status, reason = exc.category, str(exc)
        reports.append(
            SampleReport(
                slot=planned.slot,
                planned_cut=planned.cut_id,
                used_cut=None,
                manifest=planned.manifest,
                line=planned.line,
                path=planned.path,
                load_ms=round((time.perf_counter() - started) * 1e3, 3),
                status=status,
                reason=reason,
            )
        )
    return reports


def _extract_member(address: MemberAddress, folder: Path, timeout_s: float) -> tuple[Path, str | None]:
    """The member's bytes as a standalone audio file in `folder` (one ranged read), and why not if not."""
    target = folder / address.name.replace("/", "_")
    try:
        target.write_bytes(read_member(address, policy_within(timeout_s)))
        return target, None
    except ShardReadError as err:
        return target, str(err)


def _member_line(item: dict, fmt: str, audio: Path) -> tuple[dict, str]:
    """The cut's line rewritten to read the extracted member: a NeMo line (tarred) or a lhotse cut (Shar)."""
    if fmt == FORMAT_SHAR:
        recording = dict(item.get("recording") or {})
        channels = ((recording.get("sources") or [{}])[0]).get("channels", [0])
        recording["sources"] = [{"type": "file", "channels": channels, "source": str(audio)}]
        return {**item, "recording": recording}, "manifest.jsonl"
    line = {k: v for k, v in item.items() if k not in ("shard_id", "audio_filename")}
    return {**line, "audio_filepath": str(audio)}, "manifest.json"


def write_repro(session: DebugSession, place: Place, sample: SampleReport, out_dir: Path, timeout_s: float) -> Path:
    """A folder that replays just this cut: manifest.json (its line), config.yaml, command.sh.

    A cut in a shard gets its member extracted as a standalone audio file (one ranged read), its line
    rewritten to read that file, and the original line kept beside it (original_line.json).
    """
    folder = (out_dir / f"{sample.planned_cut}").resolve()  # absolute: the config and command name it
    folder.mkdir(parents=True, exist_ok=True)
    index = session.pipeline.index
    row = index.row_at(sample.manifest, sample.line) if sample.manifest and sample.line is not None else None
    item = index.item(row) if row is not None else {"audio_filepath": sample.path, "duration": None}
    fmt = index.formats[int(index.source[row])] if row is not None else "nemo"
    address = index.member(row) if row is not None else None
    extracted = None
    if row is not None and address is not None:  # an address comes with its row
        (folder / "original_line.json").write_bytes(index.text(row) + b"\n")
        audio, extract_error = _extract_member(address, folder, timeout_s)
        extracted = (address, audio, extract_error)
        item, name = _member_line(item, fmt, audio)
        manifest = folder / name
    elif fmt == "nemo":
        item = {**item, "audio_filepath": sample.path}
        item.pop("audio_filename", None)
        manifest = folder / "manifest.json"
    else:
        manifest = folder / "manifest.jsonl"
    manifest.write_text(json.dumps(item) + "\n")
    cfg = copy.deepcopy(session.cfg)
    ds = dataset_config(cfg, "train")
    ds.manifest_filepath = [str(manifest)]
    ds.shar_path, ds.is_tarred, ds.tarred_audio_filepaths = None, False, None  # the repro reads its own file
    ds.batch_size, ds.batch_duration = 1, None
    ds.shuffle, ds.drop_last = False, False
    ds.min_duration = ds.max_duration = None
    ds.num_workers = 0
    ds.sample_timeout_s = timeout_s
    cfg.model.validation_ds = None
    save_config(cfg, folder / "config.yaml")
    command = f"nestkit replay-batch 0 --config {shlex.quote(str(folder / 'config.yaml'))} --world-size 1 --timeout {timeout_s:g}"
    (folder / "command.sh").write_text("#!/bin/sh\n" + command + "\n")
    member_text = ""
    if extracted is not None:
        address, audio, extract_error = extracted
        member_text = (
            f"Member: {address.name} of shard {address.shard}, bytes {address.offset}..{address.offset + address.size} "
            f"({address.size} bytes)\n"
            + (
                f"Extracted to: {audio}\n"
                if extract_error is None
                else f"Could not be extracted ({extract_error}); the manifest names {audio}, which is missing\n"
            )
            + f"Original line: {folder / 'original_line.json'}\n"
        )
    (folder / "README.txt").write_text(
        f"Repro for cut {sample.planned_cut} ({sample.manifest}:{sample.line}), slot {sample.slot} of "
        f"{place} (step {place.step}) on rank {place.rank} of {session.layout.world_size_at(place)}.\n"
        f"Failure: {sample.status}: {sample.reason}\n"
        f"Audio: {sample.path}\n{member_text}\nRun: {command}\n"
    )
    return folder


def run_forward(session: DebugSession, batch: NestBatch, place: Place, checkpoint: Path | None) -> ForwardReport:
    """The training step on this batch: same seeds as training at the step that trained it."""
    from nestkit.model.checkpoint import load_nemo_weights
    from nestkit.model.nan_probe import NanProbe, nonfinite_parameters
    from nestkit.model.nest import NestModel
    from nestkit.training.module import training_loss

    model = NestModel(session.cfg.model)
    checkpoint_step = None
    if checkpoint is not None:
        load_nemo_weights(model, checkpoint, trust_pickle=True)
        meta = torch.load(checkpoint, map_location="cpu", weights_only=False)
        checkpoint_step = meta.get("global_step") if isinstance(meta, dict) else None
    record = logged(session.run_dir, place)
    step = record["step"] if record is not None else place.step
    model.train()
    with NanProbe(model) as probe:
        result = training_loss(model, batch, session.cfg.nestkit.seed)
        if result.loss.requires_grad:
            result.loss.backward()
    grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    grad_norm = float(torch.linalg.vector_norm(torch.stack(grads))) if grads else None
    found = probe.forward_origin or probe.backward_origin or nonfinite_parameters(model)
    nonfinite = probe.report() if found else None
    return ForwardReport(
        step=step,
        loss=float(result.loss.detach()),
        masked_frames=int(result.num_masked_frames),
        checkpoint=str(checkpoint) if checkpoint else None,
        checkpoint_step=checkpoint_step,
        logged_loss=record.get("loss") if record else None,
        nonfinite=nonfinite,
        grad_norm=grad_norm,
    )


def write_audio_view(session: DebugSession, batch: NestBatch, place: Place, out_dir: Path, describe) -> list[str]:
    """The batch's WAVs (per row: clean, noise, noisy) and its picture (log-mel, masks, mixed segments)."""
    from nestkit.tools.report.batch_view import batch_png, batch_title, write_batch_audio

    prefix = f"e{place.epoch}-b{place.index}-rank{place.rank}-"
    written = [str(p) for p in write_batch_audio(batch, out_dir, prefix)]
    picture = out_dir / f"{prefix}batch.png"
    picture.write_bytes(batch_png(session.cfg, batch, batch_title(batch, place.step), describe))
    return [*written, str(picture)]


def replay_batch(
    session: DebugSession,
    place: Place,
    forward: bool = False,
    checkpoint: Path | None = None,
    repro_dir: Path | None = None,
    audio_dir: Path | None = None,
    describe=None,
) -> ReplayReport:
    """`audio_dir`: also write the batch's WAVs and picture there; `describe(record)` words a row's
    augmentation record for the picture's titles."""
    samples = time_samples(session, place)
    batch, batch_error = None, None
    try:
        batch = session.build(place)
    except NestkitError as exc:  # e.g. every substitute failed too (a one-cut repro of a broken file)
        batch_error = str(exc)
    if batch is not None:
        for sample, record in zip(samples, batch.records):
            sample.used_cut = record["cut_id"]
    report = ReplayReport(
        place=place,
        world_size=session.layout.world_size_at(place),
        fingerprint=batch.fingerprint if batch is not None else None,
        logged=logged(session.run_dir, place),
        samples=samples,
        batch_error=batch_error,
    )
    timeout_s = dataset_config(session.cfg, "train").sample_timeout_s
    if repro_dir is not None:
        for sample in report.failed:
            report.repro_dirs.append(str(write_repro(session, place, sample, repro_dir, timeout_s)))
    if audio_dir is not None and batch is not None:
        report.audio_files = write_audio_view(session, batch, place, audio_dir, describe or str)
    if forward and batch is not None:
        report.forward = run_forward(session, batch, place, checkpoint)
    return report
