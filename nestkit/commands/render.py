"""Shared rendering of batches for `lookup` and `replay-batch`."""

from __future__ import annotations

from rich.markup import escape


def describe_augmentation(record: dict) -> str:
    """One line for a per-utterance record: noise/speech mixing, level, substitution, padding."""
    aug = record["augment"]
    mode = aug["mode"]
    if mode == "skip":
        text = "clean (augmentor skipped it)"
    elif mode == "noise":
        noise = aug["noise"]
        if noise["fallback"] == "white":
            source = f"white noise {noise['white_db']} dB (after {noise['files_tried']} noise files failed)"
        elif noise["fallback"] == "none":
            source = "no noise manifest"
        else:
            source = f"noise {noise['cut_id']} @{noise['offset']:.2f}s"
        text = f"{source}, {aug['energy_ratio_db']:+.1f} dB, {len(aug['segments'])} segment(s)"
    else:
        text = f"speech from {', '.join(aug['speakers'])}, {aug['energy_ratio_db']:+.1f} dB"
    if aug.get("note"):
        text += f" ({aug['note']})"
    if record.get("substitute_for"):
        text = f"[yellow]substitute for {escape(record['substitute_for'])}[/]; " + text
    if record.get("padded_to"):
        text += f"; padded to {record['padded_to']} samples"
    if record.get("repeat"):
        text += "; repeated to fill the last round"
    return text


def plain_augmentation(record: dict) -> str:
    """describe_augmentation without console markup (for pictures and HTML)."""
    from rich.text import Text

    return Text.from_markup(describe_augmentation(record)).plain


def match_text(matches: bool | None, logged: dict | None) -> str:
    if matches is None:
        return "[dim]no training log for this batch[/]"
    step = logged.get("step") if logged else None
    if matches:
        return f"[green]matches the training log[/] (step {step})"
    fingerprint = logged.get("fingerprint") if logged else None
    return f"[red]differs from the training log[/] (step {step} logged {fingerprint})"
