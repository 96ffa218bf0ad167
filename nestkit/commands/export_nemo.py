"""`nestkit export-nemo`: a nestkit checkpoint's weights as a state_dict NeMo loads strictly."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from nestkit.commands.common import checkpoint_file, console, output_file


def export_nemo(
    checkpoint: Path = typer.Argument(
        ..., help="nestkit Lightning checkpoint (RUN_DIR/checkpoints/last.ckpt).", show_default=False
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the state_dict (.pt).", show_default=False),
) -> None:
    """Write the encoder/decoder/quantizer weights under NeMo's key names.

    NeMo side: `model = EncDecDenoiseMaskedTokenPredModel(cfg)` with the same model config, then
    `model.load_state_dict(torch.load(OUT), strict=True)`; or use it to initialise an ASR model's
    encoder with NeMo's `init_from_pretrained_model`-style partial loading.
    """
    from nestkit.model.checkpoint import export_nemo_state_dict, read_state_dict

    checkpoint_file(checkpoint, "checkpoint")
    output_file(output, "--output")
    state = read_state_dict(checkpoint, trust_pickle=True)
    path = export_nemo_state_dict(state, output)
    import torch

    count = len(torch.load(path, map_location="cpu", weights_only=True))
    console.print(f"wrote {count} tensors to {escape(str(path))} (NeMo EncDecDenoiseMaskedTokenPredModel key names)")
