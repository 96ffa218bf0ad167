"""Write NeMo reference fixtures for nestkit's model parity tests (tests/fixtures/nemo_reference/).

NOT RUN BY CI: it imports NeMo, which nestkit never depends on. Run it by hand in an environment
with nemo-toolkit installed (the fixtures in the repo were made with nemo-toolkit 2.6.2, torch
2.13.0+cpu, 1 thread):

    /path/to/nemo-venv/bin/python tools/make_nemo_reference.py [--out DIR] [--only CASE ...]
    /path/to/nemo-venv/bin/python tools/make_nemo_reference.py --only crosscheck   # checkpoints both ways
    /path/to/nemo-venv/bin/python tools/make_nemo_reference.py --only nemo-step    # NeMo's training step time

Each case starts from the golden tiny config (tests/fixtures/golden/nest_tiny.config.yaml), changes
a few settings, builds NeMo's EncDecDenoiseMaskedTokenPredModel with a seeded torch RNG, gives
every 1-d parameter (norms, biases, positional biases) random values so none is a trivial 0 or 1,
runs two training-mode batches to move the BatchNorm statistics, and rounds every float32 weight
and buffer to a float16-representable value (so the state_dict can be stored as float16 and
restored exactly, keeping each fixture under 1.5 MB). Then, with torch.manual_seed(mask_seed)
immediately before, one forward pass exactly as NeMo's training_step makes it, plus the loss (and,
for training-mode cases with every dropout 0, the gradient norm of every parameter).

Two NeMo 2.6.2 defects are worked around, and only here:
- dist_fn="cosine": NeMo's einsum of float32 features with float64 codebooks raises "expected
  scalar type Double but found Float"; torch.einsum is wrapped to promote both operands to their
  common dtype (what the l2 branch's subtraction does implicitly).
- mask_position="post_conv": NeMo's denoising forward passes (B, F, T) features to the subsampling
  module, which expects (B, T, F), and crashes; the case composes NeMo's own modules the way the
  forward intends (transposed input), everything else unchanged.

Outputs per case: CASE.npz (arrays + meta_json), CASE.state_dict.pt (float16 where exact),
CASE.config.yaml (the config given to NeMo, loadable by nestkit.config.load_config). Also
size_table.json.gz (parameter counts and state_dict key shapes of the five sizes of
nest_fast-conformer.yaml's table) and noam_lr.json (NoamAnnealing learning rates by step).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "tests/fixtures/golden/nest_tiny.config.yaml"
SAMPLE_RATE = 16000
PCM_SCALE = 32768.0

# Each case: settings (dotted keys under model.), seeds, batch durations (s), and the mode of the
# recorded forward ("eval": dropout off, BatchNorm running stats; "train": every dropout set to 0,
# BatchNorm batch statistics, gradients recorded). keep_features=False leaves the clean features
# out of the fixture (to stay under 1.5 MB; the tokens still depend on them bit for bit).
CASES: dict[str, dict] = {
    "books2_k5_train": dict(
        settings={
            "num_books": 2,
            "num_classes": 128,
            "encoder.d_model": 96,
            "encoder.n_heads": 4,
            "encoder.n_layers": 3,
            "encoder.ff_expansion_factor": 2,
            "encoder.conv_kernel_size": 5,
            "encoder.subsampling_conv_channels": 16,
            "masking.mask_prob": 0.05,
        },
        init_seed=11,
        mask_seed=5,
        audio_seed=101,
        durations=(1.9, 1.1, 1.5),
        mode="train",
        keep_features=False,
    ),
    "cosine_layernorm_sub4": dict(
        settings={
            "quantizer.dist_fn": "cosine",
            "encoder.conv_norm_type": "layer_norm",
            "encoder.use_bias": False,
            "encoder.xscaling": False,
            "encoder.subsampling_factor": 4,
            "encoder.d_model": 64,
            "encoder.n_heads": 2,
            "encoder.n_layers": 2,
            "encoder.subsampling_conv_channels": 16,
            "decoder.use_bias": False,
            "masking.allow_overlap": False,
            "masking.mask_prob": 0.2,
            "masking.block_size": 20,
        },
        init_seed=22,
        mask_seed=7,
        audio_seed=202,
        durations=(1.9, 1.1, 1.5),
        mode="eval",
    ),
    "post_conv": dict(
        settings={
            "mask_position": "post_conv",
            "num_classes": 128,
            "encoder.d_model": 64,
            "encoder.n_heads": 4,
            "encoder.n_layers": 2,
            "encoder.subsampling_conv_channels": 32,
            "masking.mask_prob": 0.2,
        },
        init_seed=33,
        mask_seed=9,
        audio_seed=303,
        durations=(2.4, 1.6, 2.0),
        mode="eval",
    ),
    "sub16_context_featout_train": dict(
        settings={
            "squeeze_single": True,
            "num_classes": 64,
            "preprocessor.features": 64,
            "preprocessor.exact_pad": True,
            "preprocessor.window": "hamming",
            "preprocessor.normalize": "all_features",
            "encoder.subsampling_factor": 16,
            "encoder.d_model": 64,
            "encoder.n_heads": 8,
            "encoder.n_layers": 2,
            "encoder.subsampling_conv_channels": 16,
            "encoder.conv_context_size": [6, 2],
            "encoder.feat_out": 48,
            "encoder.untie_biases": False,
            "masking.mask_prob": 0.03,
        },
        init_seed=44,
        mask_seed=11,
        audio_seed=404,
        durations=(2.3, 1.2, 1.7),
        mode="train",
    ),
    "sub2_causal": dict(
        settings={
            "num_classes": 64,
            "encoder.subsampling_factor": 2,
            "encoder.causal_downsampling": True,
            "encoder.d_model": 32,
            "encoder.n_heads": 2,
            "encoder.n_layers": 1,
            "encoder.subsampling_conv_channels": 8,
            "encoder.conv_kernel_size": 3,
            "masking.mask_prob": 0.03,
        },
        init_seed=55,
        mask_seed=13,
        audio_seed=505,
        durations=(1.3, 0.9, 1.1),
        mode="eval",
    ),
    # dither and stochastic depth draw from the RNG before (dither) and after (layer drops) the
    # masks: with a width whose sample count is not a multiple of 16 and a seed that drops a layer,
    # nestkit's generator must consume NeMo's global RNG stream draw for draw
    "books4_f128_dither_depth_train": dict(
        settings={
            "num_books": 4,
            "num_classes": 128,
            "code_dim": 32,
            "preprocessor.features": 128,
            "preprocessor.dither": 1e-5,
            "encoder.subsampling_factor": 4,
            "encoder.d_model": 64,
            "encoder.n_heads": 8,
            "encoder.n_layers": 3,
            "encoder.ff_expansion_factor": 2,
            "encoder.conv_kernel_size": 31,
            "encoder.subsampling_conv_channels": 16,
            "encoder.stochastic_depth_drop_prob": 0.6,
            "masking.mask_prob": 0.04,
            "masking.block_size": 24,
        },
        init_seed=66,
        mask_seed=3,
        audio_seed=606,
        durations=(1.9003, 1.1, 1.5),
        mode="train",
        keep_features=False,
    ),
    "post_conv_disjoint_sub4": dict(
        settings={
            "mask_position": "post_conv",
            "num_books": 2,
            "num_classes": 64,
            "encoder.subsampling_factor": 4,
            "encoder.d_model": 48,
            "encoder.n_heads": 4,
            "encoder.n_layers": 2,
            "encoder.subsampling_conv_channels": 16,
            "encoder.pos_emb_max_len": 20,
            "masking.allow_overlap": False,
            "masking.mask_prob": 0.3,
            "masking.block_size": 48,
        },
        init_seed=77,
        mask_seed=15,
        audio_seed=707,
        durations=(2.4, 1.6, 2.0),
        mode="eval",
    ),
    # disjoint blocks shrunk for short utterances keep offsets up to block_size: NeMo masks padding
    # frames (row 2: a whole loss group past the encoder length, which its loss scores; row 4: the
    # 8-frame fallback on a 5-frame utterance)
    "disjoint_past_utterance_end": dict(
        settings={
            "num_classes": 64,
            "encoder.d_model": 32,
            "encoder.n_heads": 2,
            "encoder.n_layers": 1,
            "encoder.subsampling_conv_channels": 8,
            "masking.allow_overlap": False,
            "masking.mask_prob": 0.5,
        },
        init_seed=91,
        mask_seed=9,
        audio_seed=909,
        durations=(1.6, 0.55, 1.2, 0.05),
        mode="eval",
    ),
    "small176_sdpa": dict(
        settings={
            "num_classes": 256,
            "encoder.d_model": 176,
            "encoder.n_heads": 4,
            "encoder.n_layers": 1,
            "encoder.ff_expansion_factor": 1,
            "encoder.subsampling_conv_channels": 16,
            "encoder.use_pytorch_sdpa": True,
            "masking.mask_prob": 0.05,
        },
        init_seed=88,
        mask_seed=17,
        audio_seed=808,
        durations=(1.7, 2.1, 0.6),
        mode="eval",
    ),
}

DROPOUT_KEYS = ("dropout", "dropout_pre_encoder", "dropout_emb", "dropout_att")


def build_config(settings: dict, mode: str):
    """The NeMo config of a case, with every field NeMo's YAML derives by interpolation set too."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(BASE_CONFIG)
    m = cfg.model
    for key, value in settings.items():
        OmegaConf.update(m, key, value)
    post_conv = m.mask_position == "post_conv"
    enc = m.encoder
    enc.feat_in = m.preprocessor.features
    for section in (m.quantizer, m.decoder):
        section.num_classes = m.num_classes
    m.quantizer.num_books = m.decoder.num_decoders = m.loss.num_decoders = m.num_books
    m.quantizer.squeeze_single = m.decoder.squeeze_single = m.loss.squeeze_single = m.squeeze_single
    m.quantizer.feat_in = m.masking.feat_in = enc.d_model if post_conv else m.preprocessor.features
    steps = 1 if post_conv else enc.subsampling_factor
    m.quantizer.combine_time_steps = m.loss.combine_time_steps = steps
    m.decoder.feat_in = enc.feat_out if enc.feat_out > 0 else enc.d_model
    m.optim.sched.d_model = enc.d_model
    if mode == "train":
        for key in DROPOUT_KEYS:
            enc[key] = 0.0
    return cfg


def synth_batch(seed: int, durations: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Harmonic 'speech' with a pitch glide and syllable-rate envelope, plus noise; int16 PCM."""
    rng = np.random.Generator(np.random.PCG64(seed))
    lengths = np.array([int(d * SAMPLE_RATE) for d in durations])
    width = int(lengths.max())
    clean = np.zeros((len(durations), width), np.int16)
    noisy = np.zeros_like(clean)
    for row, length in enumerate(lengths):
        t = np.arange(length) / SAMPLE_RATE
        f0 = rng.uniform(90, 220) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        voice = sum(rng.uniform(0.2, 1.0) / k * np.sin(k * phase) for k in range(1, 12))
        envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, np.pi))) ** 2
        speech = 0.25 * voice * envelope / np.abs(voice).max()
        noise = rng.standard_normal(length) * 10 ** (-rng.uniform(10, 30) / 20) * np.abs(speech).max()
        clean[row, :length] = np.round(np.clip(speech, -1, 1 - 1 / PCM_SCALE) * PCM_SCALE)
        noisy[row, :length] = np.round(np.clip(speech + noise, -1, 1 - 1 / PCM_SCALE) * PCM_SCALE)
    return {"audio_pcm": clean, "noisy_pcm": noisy, "audio_len": lengths, "noisy_len": lengths.copy()}


def randomise_and_round(model, seed: int) -> None:
    """Non-trivial 1-d parameters, then every float32 tensor rounded to float16-representable values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mask_embedding") or "codebooks" in name:
                continue
            if p.dim() == 1 or "pos_bias" in name:
                noise = 0.1 * torch.randn(p.shape, generator=gen)
                is_scale = name.endswith(".weight") and ("norm" in name or "batch_norm" in name)
                p.copy_(1.0 + noise if is_scale else noise)
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.dtype == torch.float32:
                tensor.copy_(tensor.half().float())


def patch_einsum_promotion() -> None:
    plain = torch.einsum

    def promoting(equation, *operands):
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = tuple(operands[0])
        dtype = operands[0].dtype
        for op in operands[1:]:
            dtype = torch.promote_types(dtype, op.dtype)
        return plain(equation, *(op.to(dtype) for op in operands))

    torch.einsum = promoting


def forward_like_training_step(model, audio, audio_len, noisy, noisy_len, post_conv: bool):
    # NeMo's dither adds its noise to the input tensor in place (x += dither * randn_like(x)):
    # copies keep the caller's audio what the fixture stores
    audio, noisy = audio.clone(), noisy.clone()
    if not post_conv:
        return model.forward(
            input_signal=audio,
            input_signal_length=audio_len,
            noisy_input_signal=noisy,
            noisy_input_signal_length=noisy_len,
            apply_mask=True,
        )
    clean_feats, clean_len = model.preprocessor(input_signal=audio, length=audio_len)
    noisy_feats, noisy_feats_len = model.preprocessor(input_signal=noisy, length=noisy_len)
    frames, _ = model.pre_encoder.pre_encode(x=clean_feats.transpose(1, 2), lengths=clean_len)
    _, tokens = model.quantizer(input_signal=frames.transpose(1, 2))
    model.pre_encoder.set_masking_enabled(apply_mask=True)
    encoded, encoded_len = model.encoder(audio_signal=noisy_feats, length=noisy_feats_len)
    masks = model.pre_encoder.get_current_mask()
    return model.decoder(encoder_output=encoded), encoded_len, masks, tokens


def make_case(name: str, spec: dict, out_dir: Path) -> None:
    from nemo.collections.asr.models.ssl_models import EncDecDenoiseMaskedTokenPredModel
    from omegaconf import OmegaConf

    cfg = build_config(spec["settings"], spec["mode"])
    config_text = OmegaConf.to_yaml(cfg)  # before NeMo edits its copy (post_conv changes block_size)
    post_conv = cfg.model.mask_position == "post_conv"
    torch.manual_seed(spec["init_seed"])
    model = EncDecDenoiseMaskedTokenPredModel(copy.deepcopy(cfg.model))
    randomise_and_round(model, spec["init_seed"] + 1)

    batch = synth_batch(spec["audio_seed"], spec["durations"])
    audio = torch.from_numpy(batch["audio_pcm"].astype(np.float32) / PCM_SCALE)
    noisy = torch.from_numpy(batch["noisy_pcm"].astype(np.float32) / PCM_SCALE)
    audio_len, noisy_len = torch.from_numpy(batch["audio_len"]), torch.from_numpy(batch["noisy_len"])

    model.train()  # move the BatchNorm statistics away from (0, 1), then round them too
    with torch.no_grad():
        for _ in range(2):
            forward_like_training_step(model, noisy, noisy_len, audio, audio_len, post_conv)
    with torch.no_grad():
        for buffer in model.buffers():
            if buffer.dtype == torch.float32:
                buffer.copy_(buffer.half().float())

    # saved now: a training-mode forward moves the BatchNorm statistics again
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train(spec["mode"] == "train")
    features = {}

    def keep_first_features(module, inputs, output) -> None:  # the first call is the clean audio
        features.setdefault("clean", output[0].detach().clone())

    model.preprocessor.register_forward_hook(keep_first_features)
    torch.manual_seed(spec["mask_seed"])
    log_probs, encoded_len, masks, tokens = forward_like_training_step(
        model, audio, audio_len, noisy, noisy_len, post_conv
    )
    frame_mask = masks[:, 0, :]
    assert torch.equal(masks, frame_mask[:, None, :].expand_as(masks)), "masks differ across features"
    arrays = {
        **batch,
        "tokens": tokens.numpy().astype(np.int16),
        "frame_mask": frame_mask.numpy().astype(np.uint8),
        "log_probs": log_probs.detach().numpy(),
        "encoded_len": encoded_len.numpy(),
    }
    if spec.get("keep_features", True):
        arrays["clean_feats"] = features["clean"].numpy()
    meta = {
        "case": name,
        "settings": spec["settings"],
        "mode": spec["mode"],
        "init_seed": spec["init_seed"],
        "mask_seed": spec["mask_seed"],
        "audio_seed": spec["audio_seed"],
        "durations": spec["durations"],
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        loss = model.loss(masks=masks, decoder_outputs=log_probs, targets=tokens, decoder_lengths=encoded_len)
        arrays["loss"] = np.float32(loss.item())
        if spec["mode"] == "train":
            loss.backward()
            names = [n for n, p in model.named_parameters() if p.grad is not None]
            arrays["grad_names"] = np.array(names)
            arrays["grad_norms"] = np.array([model.get_parameter(n).grad.norm().item() for n in names], np.float64)
    except (RuntimeError, IndexError) as exc:  # e.g. causal subsampling: NeMo's loss cannot align frames
        meta["loss_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    arrays["meta_json"] = np.array(json.dumps(meta))

    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    stored = {k: (v.half() if v.dtype == torch.float32 else v) for k, v in state.items()}
    for key, value in state.items():
        assert torch.equal(stored[key].to(value.dtype), value), f"{key} not float16-representable"
    torch.save(stored, out_dir / f"{name}.state_dict.pt")
    (out_dir / f"{name}.config.yaml").write_text(config_text)
    sizes = sum((out_dir / f"{name}{suffix}").stat().st_size for suffix in (".npz", ".state_dict.pt", ".config.yaml"))
    print(f"{name}: {sizes / 1e6:.2f} MB, loss {arrays.get('loss')}, {meta.get('loss_error', '')}")


# nest_fast-conformer.yaml's size table (everything else as the YAML: 8192 classes, 256 subsampling channels)
SIZES: dict[str, dict] = {
    "Small": dict(d_model=176, n_heads=4, n_layers=16, conv_kernel_size=9, xscaling=True, use_bias=True),
    "Medium": dict(d_model=256, n_heads=4, n_layers=16, conv_kernel_size=9, xscaling=True, use_bias=True),
    "Large": dict(d_model=512, n_heads=8, n_layers=17, conv_kernel_size=9, xscaling=True, use_bias=True),
    "XLarge": dict(d_model=1024, n_heads=8, n_layers=24, conv_kernel_size=9, xscaling=False, use_bias=False),
    "XXLarge": dict(d_model=1024, n_heads=8, n_layers=42, conv_kernel_size=5, xscaling=False, use_bias=False),
}


def make_size_table(out_dir: Path) -> None:
    """size_table.json.gz: per size, NeMo's parameter counts and every state_dict key's shape and dtype."""
    import gzip

    from nemo.collections.asr.models.ssl_models import EncDecDenoiseMaskedTokenPredModel

    table = {}
    for name, encoder in SIZES.items():
        settings = {"num_classes": 8192, "encoder.subsampling_conv_channels": 256}
        settings.update({f"encoder.{key}": value for key, value in encoder.items()})
        cfg = build_config(settings, "eval")
        model = EncDecDenoiseMaskedTokenPredModel(cfg.model)
        table[name] = {
            "encoder": encoder,
            "params_total": sum(p.numel() for p in model.parameters()),
            "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "keys": {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()},
        }
        print(f"{name}: {table[name]['params_total']} parameters")
        del model
    with gzip.open(out_dir / "size_table.json.gz", "wt") as f:
        json.dump({"versions": versions(), "sizes": table}, f)


def make_noam_table(out_dir: Path) -> None:
    """noam_lr.json: NeMo's NoamAnnealing learning rate at chosen global steps, stepped as Lightning does."""
    import warnings

    from nemo.core.optim.lr_scheduler import NoamAnnealing

    cases = {
        "nest_small": dict(lr=5.0, d_model=176, warmup_steps=25000, warmup_ratio=None, min_lr=1e-6, max_steps=500000),
        "ratio_clamped": dict(lr=0.01, d_model=512, warmup_steps=None, warmup_ratio=0.1, min_lr=1e-5, max_steps=1000),
        "no_warmup": dict(lr=2.0, d_model=256, warmup_steps=None, warmup_ratio=None, min_lr=0.0, max_steps=None),
    }
    probe = [0, 1, 2, 3, 10, 99, 100, 101, 999, 1000, 1001, 24999, 25000, 25001, 100000, 500000]
    stepped_limit = 1010  # beyond it, jump: the scheduler is a function of last_epoch alone
    table = {}
    warnings.filterwarnings("ignore", message="To get the last learning rate")
    for name, c in cases.items():
        lrs = {}
        for step in probe:
            param = torch.nn.Parameter(torch.zeros(1))
            optimizer = torch.optim.AdamW([param], lr=c["lr"])
            sched = NoamAnnealing(
                optimizer,
                d_model=c["d_model"],
                warmup_steps=c["warmup_steps"],
                warmup_ratio=c["warmup_ratio"],
                max_steps=c["max_steps"],
                min_lr=c["min_lr"],
            )
            if step <= stepped_limit:
                for _ in range(step):  # Lightning: one scheduler step after each optimiser step
                    optimizer.step()
                    sched.step()
            else:
                sched.last_epoch = step - 1
                sched.step()
            lrs[step] = optimizer.param_groups[0]["lr"]
        table[name] = {"config": c, "lr_by_global_step": lrs}
    (out_dir / "noam_lr.json").write_text(json.dumps(table, indent=1))


def crosscheck_checkpoints(work_dir: Path) -> None:
    """Weights both ways, NeMo <-> nestkit, printed (no fixture written).

    NeMo saves a .nemo; nestkit's load_nemo_weights reads it and must give NeMo's log-probs; then
    one AdamW step in nestkit, export_nemo_state_dict from the LightningModule-style ("model.")
    keys, and NeMo loads the export with strict=True and must give nestkit's log-probs.
    """
    sys.path.insert(0, str(REPO))  # nestkit needs only torch, numpy and omegaconf, all present here
    from nemo.collections.asr.models.ssl_models import EncDecDenoiseMaskedTokenPredModel

    from nestkit.config import load_config
    from nestkit.model import NestModel, build_optimizer, export_nemo_state_dict, load_nemo_weights

    batch = synth_batch(7, (1.5, 1.1))
    audio = torch.from_numpy(batch["audio_pcm"].astype(np.float32) / PCM_SCALE)
    lengths = torch.from_numpy(batch["audio_len"])

    def nemo_log_probs(model) -> torch.Tensor:
        with torch.no_grad():
            feats, feats_len = model.preprocessor(input_signal=audio, length=lengths)
            if model.pre_encoder is not None:
                model.pre_encoder.set_masking_enabled(apply_mask=False)
            encoded, _ = model.encoder(audio_signal=feats, length=feats_len)
            return model.decoder(encoder_output=encoded)

    def nestkit_log_probs(model) -> torch.Tensor:
        with torch.no_grad():
            return model(audio, lengths, audio, lengths, apply_mask=False).log_probs

    reference = REPO / "tests/fixtures/nemo_reference"
    for config_path in (
        BASE_CONFIG,
        reference / "post_conv.config.yaml",
        reference / "books4_f128_dither_depth_train.config.yaml",
        reference / "post_conv_disjoint_sub4.config.yaml",
        reference / "small176_sdpa.config.yaml",
    ):
        from omegaconf import OmegaConf

        torch.manual_seed(123)
        nemo_model = EncDecDenoiseMaskedTokenPredModel(OmegaConf.load(config_path).model).eval()
        archive = work_dir / f"{config_path.stem}.nemo"
        nemo_model.save_to(str(archive))
        cfg = load_config(config_path).config
        ours = NestModel(cfg.model)
        load_nemo_weights(ours, archive)
        ours.eval()
        gap_in = (nestkit_log_probs(ours) - nemo_log_probs(nemo_model)).abs().max().item()
        ours.train()
        optimizer = build_optimizer(ours, cfg.model.optim)
        for group in optimizer.param_groups:
            group["lr"] = 1e-3
        out = ours(audio, lengths, audio, lengths, generator=torch.Generator().manual_seed(0))
        ours.loss(out).loss.backward()
        optimizer.step()
        ours.eval()
        exported = export_nemo_state_dict(
            {f"model.{k}": v for k, v in ours.state_dict().items()}, work_dir / "export.pt"
        )
        fresh = EncDecDenoiseMaskedTokenPredModel(OmegaConf.load(config_path).model).eval()
        fresh.load_state_dict(torch.load(exported, weights_only=True), strict=True)
        gap_out = (nemo_log_probs(fresh) - nestkit_log_probs(ours)).abs().max().item()
        print(
            f"{config_path.name}: .nemo -> nestkit max |log_probs diff| {gap_in:.2e}; "
            f"nestkit export -> NeMo strict load OK, max |log_probs diff| {gap_out:.2e}"
        )


def time_nemo_training_step(steps: int = 6, warmup: int = 1) -> dict:
    """NeMo's own training step on bench/bench_model.py's batch and size (for docs/BENCHMARKS.md)."""
    import resource
    import statistics
    import time

    sys.path.insert(0, str(REPO / "bench"))
    from bench_model import SMALL, THREADS, synthetic_batch
    from nemo.collections.asr.models.ssl_models import EncDecDenoiseMaskedTokenPredModel
    from nemo.core.optim.lr_scheduler import NoamAnnealing

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    settings = {"num_classes": 8192, "encoder.subsampling_conv_channels": 256, "preprocessor.dither": 1e-5}
    settings.update({f"encoder.{key}": value for key, value in SMALL.items()})
    cfg = build_config(settings, "eval")  # "eval": keep the YAML's dropouts
    model = EncDecDenoiseMaskedTokenPredModel(cfg.model).train()
    optim = cfg.model.optim
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay
    )
    scheduler = NoamAnnealing(
        optimizer, d_model=optim.sched.d_model, warmup_steps=optim.sched.warmup_steps, min_lr=optim.sched.min_lr
    )
    audio, audio_len, noisy, noisy_len = synthetic_batch()
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        log_probs, encoded_len, masks, tokens = model.forward(
            input_signal=audio,
            input_signal_length=audio_len,
            noisy_input_signal=noisy,
            noisy_input_signal_length=noisy_len,
            apply_mask=True,
        )
        loss = model.loss(masks=masks, decoder_outputs=log_probs, targets=tokens, decoder_lengths=encoded_len)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"step_s": times, "step_median_s": statistics.median(times), "peak_rss_bytes": peak}


def versions() -> dict[str, str]:
    import nemo

    return {
        "nemo": nemo.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests/fixtures/nemo_reference")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="case names, 'sizes', 'noam' (default: all of them); 'crosscheck' (checkpoints both ways) or "
        "'nemo-step' (NeMo's training step time, for docs/BENCHMARKS.md) only print",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    cases = [name for name in CASES if args.only is None or name in args.only]
    if cases:
        patch_einsum_promotion()  # the cosine case needs it; nothing else here calls einsum
    for name in cases:
        make_case(name, CASES[name], args.out)
    if args.only is None or "sizes" in args.only:
        make_size_table(args.out)
    if args.only is None or "noam" in args.only:
        make_noam_table(args.out)
    if args.only is not None and "nemo-step" in args.only:  # prints only; never part of "all"
        print(json.dumps(time_nemo_training_step()))
    if args.only is not None and "crosscheck" in args.only:  # prints only; never part of "all"
        import tempfile

        with tempfile.TemporaryDirectory() as work_dir:
            crosscheck_checkpoints(Path(work_dir))


if __name__ == "__main__":
    main()
