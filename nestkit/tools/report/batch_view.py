"""One batch, to hear and to see: its clean, noise and noisy audio as WAV files, and one picture of
the log-mel spectrograms of clean and noisy audio with the frames the training step masked and the
segments where noise or another speaker was mixed in.

The masks are the step's own: the training step itself (`training_loss`, with the generator of the
batch's plan position) runs until the masking module has drawn them, and stops there, so the
picture shows what the model was asked to predict, not a fresh draw. Masks do not depend on the
weights, only on the lengths and the generator, so a freshly built model gives them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nestkit.config import NestConfig
from nestkit.data.batch import NestBatch
from nestkit.tools.report.plotting import COLORS, new_figure, png_bytes

MAX_ROWS_DRAWN = 16  # rows in a batch picture; a bigger batch is drawn in part (its WAVs are all written)
ROW_HEIGHT_IN = 1.9
AUDIO_KINDS = ("clean", "noise", "noisy")


class _MasksDrawn(Exception):
    """Raised by a forward hook once the masks exist: the rest of the step is not needed."""


def step_masks(cfg: NestConfig, batch: NestBatch, model=None) -> torch.Tensor:
    """(B, mel frames) bool: the frames the training step of this batch masked."""
    from nestkit.model.nest import NestModel
    from nestkit.training.module import training_loss

    model = model if model is not None else NestModel(cfg.model)
    model.train()  # dither is drawn in training only, and it comes before the masks in the generator
    drawn: dict[str, torch.Tensor] = {}

    def keep(module, args, output):
        drawn["masks"] = output[1]
        raise _MasksDrawn

    handle = model.mask_processor.register_forward_hook(keep)
    try:
        training_loss(model, batch, cfg.nestkit.seed)
    except _MasksDrawn:
        pass
    finally:
        handle.remove()
    frames = drawn["masks"][:, 0, :] > 0
    if getattr(model, "post_conv", False):  # masks over encoder frames: each covers `factor` mel frames
        frames = frames.repeat_interleave(cfg.model.encoder.subsampling_factor, dim=1)
    return frames


def log_mel(cfg: NestConfig, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """(B, mels, frames) log-mel of the training preprocessor, without its normalisation, dither
    or padding (a picture wants levels in dB-like units), the valid frames per row, and the hop in seconds."""
    from nestkit.model.preprocessor import MelFeaturizer

    pre = dataclasses.replace(cfg.model.preprocessor, normalize="none", dither=0.0, pad_to=0)
    featurizer = MelFeaturizer(pre).eval()
    with torch.no_grad():
        feats, frames = featurizer(audio, lengths)
    return feats.numpy(), frames.numpy(), featurizer.hop_length / float(pre.sample_rate or 1)


def write_batch_audio(batch: NestBatch, out_dir: Path, prefix: str) -> list[Path]:
    """Per row: <prefix>row<i>-<cut>-{clean,noise,noisy}.wav, float32 at the batch's rate, exactly the
    batch's samples (noisy = clean + noise, as the model gets them)."""
    import soundfile as sf

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {"clean": batch.audio, "noise": batch.noise, "noisy": batch.noisy_audio}
    written = []
    for row, cut_id in enumerate(batch.cut_ids):
        length = int(batch.audio_len[row])
        for kind in AUDIO_KINDS:
            path = out_dir / f"{prefix}row{row:02d}-{_safe(cut_id)}-{kind}.wav"
            sf.write(str(path), tensors[kind][row, :length].numpy(), batch.sample_rate, subtype="FLOAT")
            written.append(path)
    return written


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]


def spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """[(start, end)) runs of True in a 1-D bool array."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def batch_figure(
    cfg: NestConfig,
    batch: NestBatch,
    title: str,
    describe: Callable[[dict], str],
    masks: torch.Tensor | None = None,
):
    """The picture of a batch: per row, clean and noisy log-mel side by side; masked frames hatched
    on the noisy side (where the model sees them masked), mixed segments as bars on both."""
    from matplotlib.patches import Patch

    masks = step_masks(cfg, batch) if masks is None else masks
    rows = min(len(batch), MAX_ROWS_DRAWN)
    clean, frames, hop_s = log_mel(cfg, batch.audio[:rows], batch.audio_len[:rows])
    noisy, _, _ = log_mel(cfg, batch.noisy_audio[:rows], batch.audio_len[:rows])
    sample_rate = batch.sample_rate
    low, high = np.percentile(clean[clean > clean.min()], [2, 99.5]) if clean.size else (0.0, 1.0)
    figure = new_figure(13, 0.9 + ROW_HEIGHT_IN * rows)
    axes = figure.subplots(rows, 2, squeeze=False, sharey=True)
    for row in range(rows):
        record = batch.records[row]
        count = int(frames[row])
        seconds = count * hop_s
        row_masks = masks[row, :count].numpy() if row < masks.shape[0] else np.zeros(count, bool)
        augment = record.get("augment") or {}
        for side, (ax, feats) in enumerate(zip(axes[row], (clean, noisy))):
            ax.imshow(
                feats[row, :, :count],
                origin="lower",
                aspect="auto",
                extent=(0, seconds, 0, feats.shape[1]),
                vmin=low,
                vmax=high,
                cmap="magma",
                interpolation="nearest",
            )
            mixed = augment.get("segments") if augment.get("mode") != "skip" and augment.get("scale") else None
            for start, length in mixed or []:
                color = COLORS.get(str(augment.get("mode")), COLORS["noise"])
                ax.axvspan(start / sample_rate, (start + length) / sample_rate, ymin=0.9, ymax=1.0, color=color)
            if side == 1:
                for start, end in spans(row_masks):
                    ax.axvspan(
                        start * hop_s,
                        end * hop_s,
                        facecolor="none",
                        edgecolor=COLORS["mask"],
                        hatch="///",
                        linewidth=0.8,
                    )
            ax.set_xlim(0, seconds)
            ax.tick_params(labelsize=7)
        masked = int(row_masks.sum())
        axes[row][0].set_ylabel(f"row {row}\nmel bin", fontsize=7)
        axes[row][0].set_title(
            f"{record['cut_id']}  {os.path.basename(str(record.get('path')))}: clean", fontsize=8, loc="left"
        )
        axes[row][1].set_title(
            f"noisy, {masked}/{count} frames masked: {describe(record)}", fontsize=8, loc="left", wrap=True
        )
    for ax in axes[-1]:
        ax.set_xlabel("seconds", fontsize=8)
    shown = f" (rows 0-{rows - 1} of {len(batch)})" if rows < len(batch) else ""
    figure.suptitle(title + shown, fontsize=10)
    legend = [
        Patch(facecolor="black", edgecolor=COLORS["mask"], hatch="///", label="masked by the step (its own draw)"),
        Patch(color=COLORS["noise"], label="noise mixed in"),
        Patch(color=COLORS["speech"], label="another speaker mixed in"),
    ]
    figure.legend(handles=legend, loc="outside lower center", ncols=3, fontsize=8)
    return figure


def batch_title(batch: NestBatch, step: int | None) -> str:
    p = batch.position
    at = f"step {step}, " if step is not None else ""
    return f"{at}epoch {p.epoch} batch {p.batch}, rank {p.rank} of {p.world_size}; fingerprint {batch.fingerprint}"


def batch_png(cfg: NestConfig, batch: NestBatch, title: str, describe: Callable[[dict], str]) -> bytes:
    figure = batch_figure(cfg, batch, title, describe)
    return png_bytes(figure)
