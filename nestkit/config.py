"""Typed configuration, read from NeMo-style YAML.

nestkit accepts NeMo's `nest_fast-conformer.yaml` unchanged (model / trainer / exp_manager, `_target_`
entries naming NeMo classes, `${...}` interpolation) and a short native config that sets only what
differs from those defaults. Every key is checked up front and every problem is reported at once:
an unknown or misspelt key names the valid keys, a wrong type names the expected one.

Defaults are the values of NeMo's `nest_fast-conformer.yaml`, so a short config trains the same
model NeMo's recipe does. Fields that follow another field (decoder.feat_in follows encoder.d_model,
quantizer.num_classes follows model.num_classes, ...) default to None and are filled in by
`_derive`, so setting `encoder.d_model` alone is enough.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from nestkit.core.errors import ConfigError

# ------------------------------------------------------------------------------------------------
# Field markers: metadata {"path": True} marks a file-system path (relative paths in a YAML
# file are resolved against that file's folder).


def _inert(default: Any, why: str, must_keep_default: bool = False) -> Any:
    """A NeMo key that nestkit accepts for compatibility but that has no effect here.

    With `must_keep_default`, a non-default value is an error (nestkit cannot do what it asks);
    otherwise the value is accepted and ignored, as it would change nothing in NeMo's NEST either.
    """
    return field(default=default, metadata={"inert": why, "must_keep_default": must_keep_default})


# ------------------------------------------------------------------------------------------------
# Data


@dataclass
class AugmentorConfig:
    """NeMo's MultiSpeakerNoiseAugmentation, with the nest_fast-conformer.yaml values."""

    prob: float = 0.5  # probability that an utterance is augmented at all
    noise_ratio: float = 0.5  # probability of noise (vs. another speaker) when augmented
    min_r_speech: float = -5.0  # dB, speech-to-interfering-speech energy ratio
    max_r_speech: float = 5.0
    min_r_noise: float = -5.0  # dB, speech-to-noise energy ratio
    max_r_noise: float = 20.0
    min_mix_rate: float = 0.5  # fraction of the utterance that is overlaid
    max_mix_rate: float = 0.5
    min_num_segments: int = 1
    max_num_segments: int = 1
    min_num_speakers: int = 1
    max_num_speakers: int = 1


@dataclass
class DatasetConfig:
    """model.train_ds / model.validation_ds."""

    manifest_filepath: list[str] = field(default_factory=list, metadata={"path": True})
    noise_manifest: Optional[list[str]] = field(default_factory=list, metadata={"path": True})
    sample_rate: Optional[int] = None  # follows model.sample_rate
    # Batching: a fixed batch_size, or batch_duration (total seconds of audio per batch, lhotse's
    # `max_duration`) with duration bucketing. Exactly one of the two.
    batch_size: Optional[int] = 8
    batch_duration: Optional[float] = None
    num_buckets: int = 30
    shuffle: bool = True
    drop_last: bool = False  # as NeMo's dataloaders when the key is absent
    min_duration: Optional[float] = 1.0  # seconds; shorter cuts are left out of the plan (counted)
    max_duration: Optional[float] = 60.0  # seconds; longer cuts are left out of the plan (counted)
    num_workers: int = 8
    pin_memory: bool = True
    prefetch_factor: int = 2
    min_audio_len_secs: float = 1.0  # shorter audio is padded (NeMo's AudioNoiseDataset)
    pad_audio_mode: Literal["repeat", "zero"] = "repeat"
    batch_augmentor: Optional[AugmentorConfig] = field(default_factory=AugmentorConfig)
    # nestkit: bounds and fallbacks for bad data
    sample_timeout_s: float = 60.0  # per-sample load bound; 0 disables it
    max_substitutes: int = 10  # substitutes tried for a cut that fails to load
    noise_max_files: int = 20  # noise files tried before white noise (as NeMo)
    noise_max_segments: int = 100  # segments of one noise file tried for a non-silent one (as NeMo)
    noise_silence_db: float = -80.0  # a noise segment whose RMS is below this (dBFS) is silent
    white_noise_min_db: float = -90.0  # fallback white-noise level range (as NeMo)
    white_noise_max_db: float = -46.0
    # NeMo keys with no effect on NEST pre-training
    use_start_end_token: bool = _inert(False, "SSL pre-training has no text")
    trim_silence: bool = _inert(False, "nestkit never trims silence", must_keep_default=True)
    is_concat: bool = _inert(False, "several manifests are simply joined", must_keep_default=True)
    concat_sampling_technique: Optional[str] = _inert("temperature", "manifests are joined, not sampled")
    concat_sampling_temperature: Optional[float] = _inert(1.0, "manifests are joined, not sampled")
    concat_sampling_probabilities: Optional[list[float]] = _inert(None, "manifests are joined")
    is_tarred: bool = _inert(False, "tarred datasets are not supported", must_keep_default=True)
    tarred_audio_filepaths: Optional[Any] = _inert(None, "tarred datasets are not supported", True)
    shuffle_n: Optional[int] = _inert(2048, "the planner shuffles the whole epoch")
    bucketing_strategy: Optional[str] = _inert("synced_randomized", "the planner syncs buckets")
    bucketing_batch_size: Optional[Any] = _inert(None, "use batch_duration", must_keep_default=True)
    use_lhotse: Optional[bool] = _inert(None, "nestkit always builds lhotse CutSets")
    labels: Optional[Any] = _inert(None, "SSL pre-training has no labels")
    int_values: bool = _inert(False, "audio is always read as float", must_keep_default=True)
    channel_selector: Optional[Any] = _inert(None, "multi-channel audio is averaged", True)


# ------------------------------------------------------------------------------------------------
# Model (keys and defaults of NeMo's nest_fast-conformer.yaml)


@dataclass
class PreprocessorConfig:
    """AudioToMelSpectrogramPreprocessor."""

    sample_rate: Optional[int] = None  # follows model.sample_rate
    # seconds; null when n_window_size / n_window_stride give the sizes in samples (NeMo requires
    # exactly that spelling when the sample counts are set)
    window_size: Optional[float] = 0.025
    window_stride: Optional[float] = 0.01
    n_window_size: Optional[int] = None  # samples; overrides window_size
    n_window_stride: Optional[int] = None  # samples; overrides window_stride
    window: Literal["hann", "hamming", "blackman", "bartlett", "none", "ones"] = "hann"
    normalize: Optional[Literal["per_feature", "all_features", "none"]] = "per_feature"
    n_fft: Optional[int] = 512
    preemph: Optional[float] = 0.97
    features: int = 80
    lowfreq: float = 0.0
    highfreq: Optional[float] = None
    log: bool = True
    log_zero_guard_type: Literal["add", "clamp"] = "add"
    log_zero_guard_value: Union[float, str] = 2**-24
    dither: float = 1e-5  # training only
    pad_to: int = 16
    frame_splicing: int = _inert(1, "frame splicing is not supported", must_keep_default=True)
    exact_pad: bool = False
    pad_value: float = 0.0
    mag_power: float = 2.0
    mel_norm: Optional[Literal["slaney"]] = "slaney"
    rng: Optional[Any] = _inert(None, "dither is seeded from (seed, step)")
    nb_augmentation_prob: float = _inert(0.0, "narrowband augmentation is not supported", True)
    nb_max_freq: int = _inert(4000, "narrowband augmentation is not supported")
    use_torchaudio: bool = _inert(False, "torchaudio is not used", must_keep_default=True)
    stft_exact_pad: bool = _inert(False, "deprecated in NeMo", must_keep_default=True)
    stft_conv: bool = _inert(False, "deprecated in NeMo", must_keep_default=True)


@dataclass
class SpecAugmentConfig:
    """Present in NeMo's NEST config 'to avoid an init error'; NEST never applies it."""

    freq_masks: int = _inert(0, "NEST does not apply spec_augment")
    time_masks: int = _inert(0, "NEST does not apply spec_augment")
    freq_width: Any = _inert(27, "NEST does not apply spec_augment")
    time_width: Any = _inert(0.05, "NEST does not apply spec_augment")
    rect_masks: int = _inert(0, "NEST does not apply spec_augment")
    rect_time: int = _inert(5, "NEST does not apply spec_augment")
    rect_freq: int = _inert(20, "NEST does not apply spec_augment")
    mask_value: float = _inert(0.0, "NEST does not apply spec_augment")
    use_vectorized_spec_augment: bool = _inert(True, "NEST does not apply spec_augment")
    use_numba_spec_augment: bool = _inert(False, "NEST does not apply spec_augment")
    rng: Optional[Any] = _inert(None, "NEST does not apply spec_augment")


@dataclass
class MaskingConfig:
    """RandomBlockMasking."""

    block_size: int = 40  # frames
    mask_prob: float = 0.01
    feat_in: Optional[int] = None  # follows preprocessor.features (pre_conv) or encoder.d_model
    freeze: bool = True
    allow_overlap: bool = True
    mask_value: Optional[float] = None  # None: a random, frozen mask embedding
    max_mask_ratio: float = 0.8


@dataclass
class QuantizerConfig:
    """RandomProjectionVectorQuantizer."""

    feat_in: Optional[int] = None  # follows preprocessor.features
    code_dim: Optional[int] = None  # follows model.code_dim
    num_books: Optional[int] = None  # follows model.num_books
    num_classes: Optional[int] = None  # follows model.num_classes
    dist_fn: Literal["l2", "cosine"] = "l2"
    time_ahead: bool = False
    freeze: bool = True
    squeeze_single: Optional[bool] = None  # follows model.squeeze_single
    combine_time_steps: Optional[int] = None  # follows encoder.subsampling_factor


@dataclass
class EncoderConfig:
    """ConformerEncoder (FastConformer settings)."""

    feat_in: Optional[int] = None  # follows preprocessor.features
    n_layers: int = 17
    d_model: int = 512
    feat_out: int = -1
    causal_downsampling: bool = False
    subsampling: Literal["dw_striding"] = "dw_striding"
    subsampling_factor: int = 8
    subsampling_conv_chunking_factor: int = 1
    subsampling_conv_channels: int = 256
    reduction: Optional[str] = _inert(None, "time reduction is not supported", must_keep_default=True)
    reduction_position: Optional[int] = _inert(None, "time reduction is not supported", True)
    reduction_factor: int = _inert(1, "time reduction is not supported", must_keep_default=True)
    ff_expansion_factor: int = 4
    self_attention_model: Literal["rel_pos"] = "rel_pos"
    n_heads: int = 8
    # [left, right] frames, or NeMo's list of them for multi-context models; only full context
    # ([-1, -1]) is supported, so [[-1, -1]] reads as [-1, -1]
    att_context_size: Optional[Union[list[int], list[list[int]]]] = field(default_factory=lambda: [-1, -1])
    att_context_probs: Optional[list[float]] = _inert(None, "multi-context training is not supported", True)
    att_context_style: Literal["regular"] = "regular"
    xscaling: bool = True
    untie_biases: bool = True
    pos_emb_max_len: int = 5000
    conv_kernel_size: int = 9
    conv_norm_type: Literal["batch_norm", "layer_norm"] = "batch_norm"
    conv_context_size: Optional[Union[list[int], Literal["causal"]]] = None  # "causal" = [kernel - 1, 0], as NeMo
    use_bias: bool = True
    dropout: float = 0.1
    dropout_pre_encoder: float = 0.1
    dropout_emb: float = 0.0
    dropout_att: float = 0.1
    stochastic_depth_drop_prob: float = 0.0
    stochastic_depth_mode: Literal["linear", "uniform"] = "linear"
    stochastic_depth_start_layer: int = 1
    global_tokens: int = _inert(0, "global tokens are not supported", must_keep_default=True)
    global_tokens_spacing: int = _inert(1, "global tokens are not supported")
    global_attn_separate: bool = _inert(False, "global tokens are not supported", must_keep_default=True)
    use_pytorch_sdpa: bool = False
    use_pytorch_sdpa_backends: Optional[list[str]] = _inert(None, "torch picks the SDPA backend")
    sync_max_audio_length: bool = _inert(True, "positional encodings are sized per batch")


@dataclass
class DecoderConfig:
    """MultiSoftmaxDecoder."""

    feat_in: Optional[int] = None  # follows encoder.d_model (or feat_out)
    num_classes: Optional[int] = None  # follows model.num_classes
    num_decoders: Optional[int] = None  # follows model.num_books
    init_mode: Optional[str] = "xavier_uniform"
    use_bias: bool = True
    squeeze_single: Optional[bool] = None  # follows model.squeeze_single


@dataclass
class LossConfig:
    """MultiMLMLoss."""

    combine_time_steps: Optional[int] = None  # follows encoder.subsampling_factor (1 for post_conv)
    mask_threshold: float = 0.8
    num_decoders: Optional[int] = None  # follows model.num_books
    squeeze_single: Optional[bool] = None  # follows model.squeeze_single


@dataclass
class SchedConfig:
    """NoamAnnealing (the only schedule NEST uses)."""

    name: Literal["NoamAnnealing"] = "NoamAnnealing"
    d_model: Optional[int] = None  # follows encoder.d_model
    warmup_steps: Optional[int] = 25000
    warmup_ratio: Optional[float] = None
    min_lr: float = 1e-6
    max_steps: Optional[int] = None  # follows trainer.max_steps
    last_epoch: int = _inert(-1, "the schedule resumes from the checkpoint", must_keep_default=True)


@dataclass
class OptimConfig:
    name: Literal["adamw"] = "adamw"
    lr: float = 5.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    weight_decay: float = 1e-3
    sched: Optional[SchedConfig] = field(default_factory=SchedConfig)


@dataclass
class ModelConfig:
    sample_rate: int = 16000
    num_classes: int = 8192
    num_books: int = 1
    code_dim: int = 16
    squeeze_single: bool = False
    mask_position: Literal["pre_conv", "post_conv"] = "pre_conv"
    train_ds: Optional[DatasetConfig] = None
    validation_ds: Optional[DatasetConfig] = None
    preprocessor: PreprocessorConfig = field(default_factory=PreprocessorConfig)
    spec_augment: Optional[SpecAugmentConfig] = field(default_factory=SpecAugmentConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


# ------------------------------------------------------------------------------------------------
# Trainer / experiment


@dataclass
class TrainerConfig:
    """The Lightning Trainer arguments NeMo's NEST recipe sets, plus a few common ones."""

    devices: Union[int, str, list[int]] = -1  # -1: all GPUs, or 1 process on CPU
    num_nodes: int = 1
    max_epochs: int = -1
    max_steps: int = 500000
    val_check_interval: Optional[Union[int, float]] = 2500
    accelerator: str = "auto"
    strategy: str = "ddp"
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = 0.0
    gradient_clip_algorithm: Literal["norm", "value"] = "norm"
    precision: Union[int, str] = 32
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    num_sanity_val_steps: int = 0
    check_val_every_n_epoch: Optional[int] = _inert(1, "training is step-based: validation runs every val_check_interval steps")
    sync_batchnorm: bool = True
    enable_checkpointing: bool = False  # nestkit's checkpointing is configured in exp_manager
    logger: bool = False  # loggers are configured in exp_manager
    benchmark: bool = False
    limit_train_batches: Optional[Union[int, float]] = None
    limit_val_batches: Optional[Union[int, float]] = None
    deterministic: Optional[bool] = None
    use_distributed_sampler: bool = _inert(False, "nestkit's planner shards the data", True)


@dataclass
class CheckpointConfig:
    monitor: Optional[str] = "val_loss"
    mode: Literal["min", "max"] = "min"
    save_top_k: int = 1
    save_last: bool = True
    every_n_train_steps: Optional[int] = 1000
    keep_periodic: int = 3  # every-N-steps checkpoints kept (the newest); -1 keeps all (replay-batch --forward uses them)
    filename: Optional[str] = None
    always_save_nemo: bool = _inert(True, "nestkit writes Lightning checkpoints; see `nestkit export-nemo`")
    save_nemo_on_train_end: bool = _inert(True, "see `nestkit export-nemo`")


@dataclass
class ExpManagerConfig:
    exp_dir: Optional[str] = field(default=None, metadata={"path": True})  # default: ./runs
    name: Optional[str] = None  # follows the top-level name
    create_tensorboard_logger: bool = True
    create_csv_logger: bool = True
    create_checkpoint_callback: bool = True
    checkpoint_callback_params: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume_if_exists: bool = False
    resume_ignore_no_checkpoint: bool = True
    create_wandb_logger: bool = _inert(False, "W&B logging is not built in", must_keep_default=True)
    wandb_logger_kwargs: Optional[dict[str, Any]] = _inert(None, "W&B logging is not built in")
    version: Optional[str] = _inert(None, "the run folder is exp_dir/name")
    use_datetime_version: bool = _inert(True, "the run folder is exp_dir/name")


# ------------------------------------------------------------------------------------------------
# nestkit's own section


@dataclass
class WatchdogConfig:
    """nestkit.watchdog: per-rank heartbeats and the stall watchdog (see docs/debugging.md).

    Bounds, innermost first: a sample read is bounded by model.train_ds.sample_timeout_s (a read
    that overruns becomes a quarantined substitute, and training goes on); a batch by
    nestkit.dataloader_timeout_s (an error naming the batch's cuts and files); everything a rank
    does by the stall timeouts below (stacks of every rank and worker, a report, then abort or
    wait). Keep sample_timeout_s below the stall timeout, so one bad file costs a substitute, not
    the job.
    """

    enabled: bool = True  # detect stalls; heartbeats are written either way
    # Seconds without progress before a rank is declared stalled. None derives it from observed
    # step times: max(min_stall_timeout_s, stall_factor x the 95th percentile of recent steps).
    stall_timeout_s: Optional[float] = None
    min_stall_timeout_s: float = 120.0
    stall_factor: float = 20.0
    first_step_timeout_s: float = 900.0  # start-up, first batch, compilation
    slow_phase_timeout_s: float = 1800.0  # validation (per batch) and checkpointing
    # A rank waiting for a batch whose loader is still reading (a read started or ended within the
    # stall timeout) is slow, not stalled; it is declared stalled after this long without a step.
    slow_data_timeout_s: float = 1800.0
    action: Literal["abort", "wait"] = "abort"  # after the report: end the job, or keep it for py-spy/gdb
    poll_interval_s: float = 1.0
    heartbeat_interval_s: float = 1.0  # how often each rank rewrites heartbeat/rank<R>.json
    dump_grace_s: float = 15.0  # how long the reporting rank waits for the other ranks' dumps
    py_spy: bool = True  # add `py-spy dump` of each DataLoader worker when py-spy is installed


@dataclass
class NestkitConfig:
    seed: int = 0
    dataloader_timeout_s: float = 600.0  # DataLoader `timeout` when num_workers > 0; 0 disables
    log_batches: bool = True  # per-rank log of each step's fingerprint and cut ids
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)


@dataclass
class NestConfig:
    name: str = "SSL-NEST-FastConformer"
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    exp_manager: ExpManagerConfig = field(default_factory=ExpManagerConfig)
    nestkit: NestkitConfig = field(default_factory=NestkitConfig)
    init_from: Optional[str] = field(default=None, metadata={"path": True})
    # NeMo's names for init_from (`maybe_init_from_pretrained_checkpoint`)
    init_from_nemo_model: Optional[str] = field(default=None, metadata={"path": True})
    init_from_ptl_ckpt: Optional[str] = field(default=None, metadata={"path": True})

    @property
    def run_dir(self) -> Path:
        exp_dir = Path(self.exp_manager.exp_dir or "runs")
        return exp_dir / (self.exp_manager.name or self.name)


# ------------------------------------------------------------------------------------------------
# `_target_` entries: which NeMo classes each section may name

_TARGETS: dict[type, tuple[str, ...]] = {
    AugmentorConfig: ("MultiSpeakerNoiseAugmentation",),
    PreprocessorConfig: ("AudioToMelSpectrogramPreprocessor",),
    SpecAugmentConfig: ("SpectrogramAugmentation",),
    MaskingConfig: ("RandomBlockMasking",),
    QuantizerConfig: ("RandomProjectionVectorQuantizer",),
    EncoderConfig: ("ConformerEncoder",),
    DecoderConfig: ("MultiSoftmaxDecoder",),
    LossConfig: ("MultiMLMLoss",),
}


def _check_target(cls: type, target: Any, where: str, problems: list[str]) -> None:
    allowed = _TARGETS.get(cls)
    if allowed is None:
        problems.append(f"{where}._target_: this section takes no _target_ (got {target!r})")
        return
    class_name = str(target).rsplit(".", 1)[-1]
    if class_name not in allowed:
        problems.append(
            f"{where}._target_: unsupported class (expected {' or '.join(allowed)}, got {target!r}). "
            f"nestkit implements NEST's modules only"
        )


# ------------------------------------------------------------------------------------------------
# Conversion from plain data to the dataclasses, collecting every problem


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(item)}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


_NO_MATCH = object()


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Return `value` as type `tp`, or _NO_MATCH (without recording a problem)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        # An exact match wins: typing caches Union[int, float] and Union[float, int] as one object,
        # so the order of the options cannot be relied on.
        if type(value) in typing.get_args(tp) and not dataclasses.is_dataclass(value):
            return value
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            sub_problems: list[str] = []
            result = _coerce(value, option, where, sub_problems)
            if result is not _NO_MATCH:
                problems.extend(sub_problems)
                return result
        return _NO_MATCH
    if origin is Literal:
        return value if value in typing.get_args(tp) else _NO_MATCH
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str) and item_tp is str:
            # NeMo allows "a.json,b.json" for manifest lists
            return [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            return _NO_MATCH
        items = [_coerce(v, item_tp, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return _NO_MATCH if any(v is _NO_MATCH for v in items) else items
    if origin is dict:
        return value if isinstance(value, dict) else _NO_MATCH
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            return _NO_MATCH
        return _build(tp, value, where, problems)
    if tp is bool:
        return value if isinstance(value, bool) else _NO_MATCH
    if tp is int:
        if isinstance(value, bool):
            return _NO_MATCH
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return _NO_MATCH
    if tp is float:
        if isinstance(value, bool):
            return _NO_MATCH
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 as a string
                return float(value)
            except ValueError:
                return _NO_MATCH
        return _NO_MATCH
    if tp is str:
        return value if isinstance(value, str) else _NO_MATCH
    return value if isinstance(value, tp) else _NO_MATCH


def _build(cls: type, data: dict, where: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        here = f"{where}.{key}" if where else str(key)
        if key == "_target_":
            _check_target(cls, value, where or "config", problems)
            continue
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problems.append(
                f"{here}: unknown key. {hint}Valid keys under {where or 'the top level'}: "
                f"{', '.join(sorted(fields))}"
            )
            continue
        if value == "???":
            problems.append(f"{here}: required value is missing (got ???). Set it in the YAML or as {here}=...")
            continue
        result = _coerce(value, hints[key], here, problems)
        if result is _NO_MATCH:
            problems.append(f"{here}: wrong type (expected {_type_name(hints[key])}, got {value!r})")
            continue
        kwargs[key] = result
    return cls(**kwargs)


def _walk(obj: Any, where: str = ""):
    """Yield (path, dataclass instance, field) for every field of every nested dataclass."""
    for f in dataclasses.fields(obj):
        here = f"{where}.{f.name}" if where else f.name
        yield here, obj, f
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, here)


def _check_inert(cfg: NestConfig, problems: list[str]) -> list[str]:
    """Errors for inert keys that ask for something nestkit cannot do; notes for the others."""
    notes = []
    for where, owner, f in _walk(cfg):
        if "inert" not in f.metadata:
            continue
        value = getattr(owner, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if value == default:
            continue
        if f.metadata["must_keep_default"]:
            problems.append(f"{where}: not supported (expected {default!r}, got {value!r}). {f.metadata['inert']}")
        else:
            notes.append(f"{where}={value!r} has no effect: {f.metadata['inert']}")
    return notes


# ------------------------------------------------------------------------------------------------
# Derived fields and cross-field checks


def _derive(cfg: NestConfig) -> None:
    m = cfg.model
    enc = m.encoder
    if m.preprocessor.sample_rate is None:
        m.preprocessor.sample_rate = m.sample_rate
    for ds in (m.train_ds, m.validation_ds):
        if ds is not None:
            ds.sample_rate = m.sample_rate if ds.sample_rate is None else ds.sample_rate
            ds.noise_manifest = ds.noise_manifest or []
    if enc.feat_in is None:
        enc.feat_in = m.preprocessor.features
    if enc.conv_context_size == "causal":
        enc.conv_context_size = [enc.conv_kernel_size - 1, 0]
    contexts = enc.att_context_size
    if contexts and all(isinstance(c, list) for c in contexts) and all(c == [-1, -1] for c in contexts):
        enc.att_context_size = [-1, -1]
    if m.masking.feat_in is None:
        m.masking.feat_in = m.preprocessor.features if m.mask_position == "pre_conv" else enc.d_model
    q = m.quantizer
    if q.feat_in is None:
        q.feat_in = m.preprocessor.features if m.mask_position == "pre_conv" else enc.d_model
    q.code_dim = m.code_dim if q.code_dim is None else q.code_dim
    q.num_books = m.num_books if q.num_books is None else q.num_books
    q.num_classes = m.num_classes if q.num_classes is None else q.num_classes
    q.squeeze_single = m.squeeze_single if q.squeeze_single is None else q.squeeze_single
    if q.combine_time_steps is None:
        q.combine_time_steps = enc.subsampling_factor if m.mask_position == "pre_conv" else 1
    d = m.decoder
    d.feat_in = (enc.feat_out if enc.feat_out > 0 else enc.d_model) if d.feat_in is None else d.feat_in
    d.num_classes = m.num_classes if d.num_classes is None else d.num_classes
    d.num_decoders = m.num_books if d.num_decoders is None else d.num_decoders
    d.squeeze_single = m.squeeze_single if d.squeeze_single is None else d.squeeze_single
    loss = m.loss
    if loss.combine_time_steps is None:
        loss.combine_time_steps = enc.subsampling_factor if m.mask_position == "pre_conv" else 1
    loss.num_decoders = m.num_books if loss.num_decoders is None else loss.num_decoders
    loss.squeeze_single = m.squeeze_single if loss.squeeze_single is None else loss.squeeze_single
    if m.optim.sched is not None:
        if m.optim.sched.d_model is None:
            m.optim.sched.d_model = enc.d_model
        if m.optim.sched.max_steps is None:
            m.optim.sched.max_steps = cfg.trainer.max_steps
    if cfg.exp_manager.name is None:
        cfg.exp_manager.name = cfg.name


def _check_dataset(ds: DatasetConfig, where: str, problems: list[str]) -> None:
    if not ds.manifest_filepath:
        problems.append(f"{where}.manifest_filepath: required (expected a path or a list of paths, got nothing)")
    if (ds.batch_size is None) == (ds.batch_duration is None):
        problems.append(
            f"{where}: set exactly one of batch_size and batch_duration "
            f"(got batch_size={ds.batch_size}, batch_duration={ds.batch_duration})"
        )
    if ds.batch_size is not None and ds.batch_size < 1:
        problems.append(f"{where}.batch_size: must be at least 1 (got {ds.batch_size})")
    if ds.batch_duration is not None and ds.batch_duration <= 0:
        problems.append(f"{where}.batch_duration: must be positive seconds (got {ds.batch_duration})")
    if ds.num_buckets < 1:
        problems.append(f"{where}.num_buckets: must be at least 1 (got {ds.num_buckets})")
    if ds.min_duration is not None and ds.max_duration is not None and ds.min_duration > ds.max_duration:
        problems.append(
            f"{where}: min_duration must not exceed max_duration (got {ds.min_duration} > {ds.max_duration})"
        )
    for name in ("num_workers", "max_substitutes", "noise_max_segments"):
        if getattr(ds, name) < 0:
            problems.append(f"{where}.{name}: must not be negative (got {getattr(ds, name)})")
    if ds.noise_max_files < 1:
        problems.append(f"{where}.noise_max_files: must be at least 1 (got {ds.noise_max_files})")
    if ds.prefetch_factor < 1:
        problems.append(f"{where}.prefetch_factor: must be at least 1 (got {ds.prefetch_factor})")
    if ds.sample_timeout_s < 0:
        problems.append(f"{where}.sample_timeout_s: must be >= 0 seconds, 0 = unbounded (got {ds.sample_timeout_s})")
    if ds.min_audio_len_secs < 0:
        problems.append(f"{where}.min_audio_len_secs: must not be negative (got {ds.min_audio_len_secs})")
    if ds.white_noise_min_db >= ds.white_noise_max_db:
        problems.append(
            f"{where}: white_noise_min_db must be below white_noise_max_db "
            f"(got {ds.white_noise_min_db} >= {ds.white_noise_max_db})"
        )
    aug = ds.batch_augmentor
    if aug is not None:
        a = f"{where}.batch_augmentor"
        for name in ("prob", "noise_ratio"):
            if not 0.0 <= getattr(aug, name) <= 1.0:
                problems.append(f"{a}.{name}: must be in [0, 1] (got {getattr(aug, name)})")
        if not 0.0 <= aug.min_mix_rate <= aug.max_mix_rate <= 1.0:
            problems.append(
                f"{a}: need 0 <= min_mix_rate <= max_mix_rate <= 1 (got {aug.min_mix_rate}, {aug.max_mix_rate})"
            )
        for low, high in (("min_r_speech", "max_r_speech"), ("min_r_noise", "max_r_noise")):
            if getattr(aug, low) > getattr(aug, high):
                problems.append(f"{a}: {low} must not exceed {high} (got {getattr(aug, low)} > {getattr(aug, high)})")
        for low, high in (("min_num_segments", "max_num_segments"), ("min_num_speakers", "max_num_speakers")):
            if not 1 <= getattr(aug, low) <= getattr(aug, high):
                problems.append(
                    f"{a}: need 1 <= {low} <= {high} (got {getattr(aug, low)}, {getattr(aug, high)})"
                )


def _check(cfg: NestConfig, problems: list[str]) -> None:
    m = cfg.model
    enc = m.encoder
    if m.train_ds is not None:
        _check_dataset(m.train_ds, "model.train_ds", problems)
    if m.validation_ds is not None:
        _check_dataset(m.validation_ds, "model.validation_ds", problems)
    if m.preprocessor.sample_rate != m.sample_rate:
        problems.append(
            f"model.preprocessor.sample_rate: must equal model.sample_rate "
            f"(expected {m.sample_rate}, got {m.preprocessor.sample_rate})"
        )
    for ds_name, ds in (("train_ds", m.train_ds), ("validation_ds", m.validation_ds)):
        if ds is not None and ds.sample_rate != m.sample_rate:
            problems.append(
                f"model.{ds_name}.sample_rate: must equal model.sample_rate (expected {m.sample_rate}, got {ds.sample_rate})"
            )
    if enc.subsampling_factor not in (2, 4, 8, 16, 32):
        problems.append(f"model.encoder.subsampling_factor: must be a power of 2 from 2 to 32 (got {enc.subsampling_factor})")
    if enc.d_model % enc.n_heads:
        problems.append(f"model.encoder: d_model must be divisible by n_heads (got {enc.d_model} and {enc.n_heads})")
    if enc.d_model % 2:
        problems.append(f"model.encoder.d_model: must be even (position encodings come in sin/cos pairs; got {enc.d_model})")
    chunking = enc.subsampling_conv_chunking_factor
    if chunking not in (-1, 1) and (chunking < 2 or chunking & (chunking - 1)):
        problems.append(f"model.encoder.subsampling_conv_chunking_factor: unsupported (expected -1, 1 or a power of 2, got {chunking})")
    pre = m.preprocessor
    for seconds, samples in (("window_size", "n_window_size"), ("window_stride", "n_window_stride")):
        if getattr(pre, seconds) is None and not getattr(pre, samples):
            problems.append(f"model.preprocessor.{seconds}: required when {samples} is not set (expected seconds, got null)")
    window = pre.n_window_size or int((pre.window_size or 0) * m.sample_rate)
    if pre.n_fft is not None and window and pre.n_fft < window:
        problems.append(f"model.preprocessor.n_fft: shorter than the window (expected at least {window} samples, got {pre.n_fft})")
    if enc.conv_kernel_size % 2 == 0 and enc.conv_context_size is None:
        problems.append(f"model.encoder.conv_kernel_size: must be odd (got {enc.conv_kernel_size})")
    if enc.att_context_size not in (None, [-1, -1]):
        problems.append(
            f"model.encoder.att_context_size: limited attention context is not supported "
            f"(expected [-1, -1], got {enc.att_context_size})"
        )
    if enc.feat_in != m.preprocessor.features:
        problems.append(
            f"model.encoder.feat_in: must equal model.preprocessor.features "
            f"(expected {m.preprocessor.features}, got {enc.feat_in})"
        )
    enc_out = enc.feat_out if enc.feat_out > 0 else enc.d_model
    if m.decoder.feat_in != enc_out:
        problems.append(f"model.decoder.feat_in: must equal the encoder's output size (expected {enc_out}, got {m.decoder.feat_in})")
    expected_mask_feat = m.preprocessor.features if m.mask_position == "pre_conv" else enc.d_model
    if m.masking.feat_in != expected_mask_feat:
        problems.append(
            f"model.masking.feat_in: must match mask_position={m.mask_position} "
            f"(expected {expected_mask_feat}, got {m.masking.feat_in})"
        )
    q = m.quantizer
    expected_q_feat = m.preprocessor.features if m.mask_position == "pre_conv" else enc.d_model
    if q.feat_in != expected_q_feat:
        problems.append(f"model.quantizer.feat_in: must match mask_position={m.mask_position} (expected {expected_q_feat}, got {q.feat_in})")
    if q.time_ahead:
        problems.append("model.quantizer.time_ahead: not supported by the NEST model (expected false: the model gives "
                        "the quantizer (B, D, T) features; got true)")
    for name, expected in (("num_classes", m.num_classes), ("num_books", m.num_books)):
        if getattr(q, name) != expected:
            problems.append(f"model.quantizer.{name}: must equal model.{name} (expected {expected}, got {getattr(q, name)})")
    if m.decoder.num_classes != q.num_classes:
        problems.append(f"model.decoder.num_classes: must equal the quantizer's (expected {q.num_classes}, got {m.decoder.num_classes})")
    if m.decoder.num_decoders != q.num_books:
        problems.append(f"model.decoder.num_decoders: must equal the number of codebooks (expected {q.num_books}, got {m.decoder.num_decoders})")
    if m.loss.combine_time_steps != q.combine_time_steps:
        problems.append(
            f"model.loss.combine_time_steps: must equal model.quantizer.combine_time_steps "
            f"(expected {q.combine_time_steps}, got {m.loss.combine_time_steps})"
        )
    if not 0.0 <= m.masking.mask_prob <= 1.0:
        problems.append(f"model.masking.mask_prob: must be in [0, 1] (got {m.masking.mask_prob})")
    if m.masking.block_size < 1:
        problems.append(f"model.masking.block_size: must be at least 1 frame (got {m.masking.block_size})")
    if len(m.optim.betas) != 2:
        problems.append(f"model.optim.betas: expected two numbers (got {m.optim.betas})")
    sched = m.optim.sched
    if sched is not None and sched.warmup_steps is not None and sched.warmup_ratio is not None:
        problems.append("model.optim.sched: set warmup_steps or warmup_ratio, not both")
    t = cfg.trainer
    if t.max_steps <= 0 and t.max_epochs <= 0:
        problems.append(f"trainer: set max_steps or max_epochs (got max_steps={t.max_steps}, max_epochs={t.max_epochs})")
    if t.accumulate_grad_batches < 1:
        problems.append(f"trainer.accumulate_grad_batches: must be at least 1 (got {t.accumulate_grad_batches})")
    inits = [n for n in ("init_from", "init_from_nemo_model", "init_from_ptl_ckpt") if getattr(cfg, n)]
    if len(inits) > 1:
        problems.append(f"{' and '.join(inits)}: set only one checkpoint to initialise from")
    w = cfg.nestkit.watchdog
    if w.stall_timeout_s is not None and w.stall_timeout_s <= 0:
        problems.append(f"nestkit.watchdog.stall_timeout_s: must be positive seconds or null (got {w.stall_timeout_s})")
    for name in ("min_stall_timeout_s", "first_step_timeout_s", "slow_phase_timeout_s", "slow_data_timeout_s", "poll_interval_s",
                 "heartbeat_interval_s", "stall_factor"):
        if getattr(w, name) <= 0:
            problems.append(f"nestkit.watchdog.{name}: must be positive (got {getattr(w, name)})")
    if w.dump_grace_s < 0:
        problems.append(f"nestkit.watchdog.dump_grace_s: must not be negative seconds (got {w.dump_grace_s})")
    if cfg.nestkit.dataloader_timeout_s < 0:
        problems.append(f"nestkit.dataloader_timeout_s: must be >= 0 seconds, 0 = unbounded (got {cfg.nestkit.dataloader_timeout_s})")


# ------------------------------------------------------------------------------------------------
# Loading


def _resolve_paths(data: Any, cls: type, base: Path) -> None:
    """Make relative path fields in `data` (a plain dict for `cls`) absolute against `base`."""
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in data or data[f.name] is None:
            continue
        value = data[f.name]
        if f.metadata.get("path"):
            data[f.name] = _absolute(value, base)
            continue
        inner = hints[f.name]
        for option in typing.get_args(inner) or (inner,):
            if dataclasses.is_dataclass(option):
                _resolve_paths(value, option, base)


def _absolute(value: Any, base: Path) -> Any:
    if isinstance(value, str):
        if "," in value:  # NeMo's comma-joined manifest lists
            return ",".join(_absolute(v.strip(), base) for v in value.split(","))
        if value == "???" or "${" in value or os.path.isabs(value):
            return value
        return str((base / value).resolve())
    if isinstance(value, (list, tuple)):
        return [_absolute(v, base) for v in value]
    return value


@dataclass
class LoadedConfig:
    config: NestConfig
    source: Optional[str]
    notes: list[str]  # accepted keys that have no effect, for the user to see once


def config_from_dict(data: dict, source: Optional[str] = None, base_dir: Optional[Path] = None) -> LoadedConfig:
    """Build and validate a config from plain (already interpolated) data."""
    if base_dir is not None:
        _resolve_paths(data, NestConfig, base_dir)
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"top level: expected a mapping, got {type(data).__name__}"], source)
    cfg = _build(NestConfig, data, "", problems)
    notes = _check_inert(cfg, problems)
    if not problems:
        _derive(cfg)
        _check(cfg, problems)
    if problems:
        raise ConfigError(problems, source)
    return LoadedConfig(cfg, source, notes)


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> LoadedConfig:
    """Read a YAML config (NeMo layout or native), apply `dotted.key=value` overrides, validate.

    Relative paths inside the YAML are relative to the YAML's folder; relative paths given as
    overrides are relative to the current folder.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: no such config file (expected a YAML file)"], str(path))
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OmegaConfBaseException, OSError, ValueError) as exc:
        raise ConfigError([f"cannot parse YAML: {exc}"], str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"top level: expected a mapping, got {type(raw).__name__}"], str(path))
    _resolve_paths(raw, NestConfig, path.parent.resolve())
    problems = [f"override {o!r}: expected dotted.key=value" for o in overrides if "=" not in o]
    if problems:
        raise ConfigError(problems, str(path))
    try:
        merged = OmegaConf.merge(OmegaConf.create(raw), OmegaConf.from_dotlist(list(overrides)))
        override_data = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=False)
        _resolve_paths(override_data, NestConfig, Path.cwd())
        merged = OmegaConf.merge(merged, OmegaConf.create(override_data))
        data = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError([f"cannot resolve config: {exc}".splitlines()[0]], str(path)) from None
    return config_from_dict(data, source=str(path))


def config_to_dict(cfg: NestConfig) -> dict:
    """Plain data for YAML, with the derived fields filled in (what the run really used)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: NestConfig, path: str | os.PathLike) -> None:
    import yaml

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
