"""The config schema: NeMo's `nest_fast-conformer.yaml` layout as typed dataclasses.

Defaults are the values of NeMo's `nest_fast-conformer.yaml`, so a short config trains the same
model NeMo's recipe does. Fields that follow another field (decoder.feat_in follows encoder.d_model,
quantizer.num_classes follows model.num_classes, ...) default to None and are filled in by
`nestkit.config.derive`, so setting `encoder.d_model` alone is enough. A field's metadata marks a
file-system path ({"path": True}) or a NeMo key accepted for compatibility (`inert`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union


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

    manifest_filepath: Optional[list[str]] = field(default_factory=list, metadata={"path": True})  # null: []
    # Sharded corpora, NeMo's keys (see nestkit/data/corpus.py): lhotse Shar (`shar_path`: a directory, a
    # list of directories or of [directory, weight], or {cuts: pattern, recording: pattern}), or a NeMo
    # tarred dataset (`is_tarred` + `tarred_audio_filepaths`, with manifest_filepath); paths or http(s) URLs
    shar_path: Optional[Any] = field(default=None, metadata={"path": True})
    is_tarred: bool = False
    tarred_audio_filepaths: Optional[Union[str, list[str]]] = field(default=None, metadata={"path": True})
    noise_manifest: Optional[list[str]] = field(default_factory=list, metadata={"path": True})
    sample_rate: Optional[int] = None  # follows model.sample_rate
    # Batching: a fixed batch_size, or batch_duration (total seconds of audio per batch, lhotse's
    # `max_duration`) with duration bucketing. Exactly one of the two.
    batch_size: Optional[int] = 8
    batch_duration: Optional[float] = None
    num_buckets: int = 30
    shuffle: bool = True
    drop_last: bool = False  # as NeMo's dataloaders when the key is absent
    # The epoch's order (nestkit.data.plan): "global" shuffles every cut of the corpus; "shards" (Shar or NeMo
    # tarred corpora only) shuffles the shards and walks them `shard_window` at a time, so that consecutive
    # micro-batches -- what the ranks take in each step -- read few shards, forward. Less random, more local.
    order: Literal["global", "shards"] = "global"
    shard_window: int = 4  # shards read together in order: shards (their micro-batches are shuffled together)
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
    shard_strategy: Optional[str] = _inert("scatter", "every rank reads every shard: the planner deals out batches")
    shard_manifests: Optional[bool] = _inert(False, "manifests are indexed whole: one shard_id per line suffices")
    shard_seed: Optional[Any] = _inert("trng", "the planner shuffles by (seed, epoch): cuts, or shards with order")
    skip_missing_manifest_entries: Optional[bool] = _inert(False, "a member no line names is simply not a cut")
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
    check_val_every_n_epoch: Optional[int] = _inert(
        1, "training is step-based: validation runs every val_check_interval steps"
    )
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
    keep_periodic: int = (
        3  # every-N-steps checkpoints kept (the newest); -1 keeps all (replay-batch --forward uses them)
    )
    filename: Optional[str] = None
    always_save_nemo: bool = _inert(True, "nestkit writes Lightning checkpoints; see `nestkit export-nemo`")
    save_nemo_on_train_end: bool = _inert(True, "see `nestkit export-nemo`")


@dataclass
class MLFlowLoggerConfig:
    """exp_manager.mlflow_logger_kwargs: NeMo's MLFlowParams keys, passed to Lightning's MLFlowLogger."""

    experiment_name: Optional[str] = None  # default: exp_manager.name (as NeMo)
    tracking_uri: Optional[str] = None  # default: $MLFLOW_TRACKING_URI, else a file store in save_dir
    tags: Optional[dict[str, Any]] = None
    save_dir: Optional[str] = field(default=None, metadata={"path": True})  # default: <run folder>/mlruns
    prefix: str = ""
    artifact_location: Optional[str] = None
    run_id: Optional[str] = None  # continue this MLflow run


@dataclass
class ExpManagerConfig:
    exp_dir: Optional[str] = field(default=None, metadata={"path": True})  # default: ./runs
    name: Optional[str] = None  # follows the top-level name
    create_tensorboard_logger: bool = True
    create_csv_logger: bool = True
    create_checkpoint_callback: bool = True
    checkpoint_callback_params: CheckpointConfig = field(default_factory=CheckpointConfig)
    # NeMo's semantics and defaults: resume_if_exists acts as `train --resume`; with nothing to resume
    # that is an error unless resume_ignore_no_checkpoint (then a new run starts; see README, Resume)
    resume_if_exists: bool = False
    resume_ignore_no_checkpoint: bool = False
    # NeMo's logger switches, mapped to Lightning's own loggers (optional extras: `nestkit[wandb]`,
    # `nestkit[mlflow]`). W&B writes under the run folder unless wandb_logger_kwargs.save_dir says otherwise.
    create_wandb_logger: bool = False
    wandb_logger_kwargs: Optional[dict[str, Any]] = None  # passed to WandbLogger / wandb.init (name, project, ...)
    create_mlflow_logger: bool = False
    mlflow_logger_kwargs: Optional[MLFlowLoggerConfig] = field(default_factory=lambda: MLFlowLoggerConfig())
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
    # local rank 0 starts a process that watches this node's ranks from outside (a stopped rank, or
    # one holding the GIL, cannot report on itself): nestkit.monitor.node_monitor
    node_monitor: bool = True


@dataclass
class StragglerConfig:
    """nestkit.straggler: a warning while training when one rank is persistently slower than its peers.

    Every `check_interval_s`, global rank 0 compares the ranks' heartbeats, phase by phase (waiting
    for data; computing, waits for peers left out): each rank's median seconds per step over its
    recent steps against the median of its peers. A rank that is `factor` times slower than its
    peers, and slower by at least `min_excess_s` per step, in `checks` consecutive checks is named,
    with the phase and, for data waits, its slowest recent files; the warning is printed and kept in
    the run folder's stragglers.jsonl (`nestkit report` shows it).
    """

    enabled: bool = True
    factor: float = 1.5
    min_excess_s: float = 0.05  # seconds per step: below this a difference is noise, not a straggler
    min_steps: int = 10  # steps a rank must have trained before it is compared
    checks: int = 3  # consecutive checks in which the same rank must be slower
    check_interval_s: float = 10.0


@dataclass
class AnomalyConfig:
    """nestkit.anomaly: loss spikes, exploding gradients and NaN/Inf, named by their data (see
    docs/debugging.md, "the loss spiked at step N").

    Every optimizer step is judged on values that are identical on every rank (the step's loss
    over all ranks and micro-batches, the global gradient norm, each utterance's loss), each
    against the median and MAD of its last `window` steps; NaN/Inf is judged from the first step.
    """

    enabled: bool = True
    action: Literal["warn", "skip", "stop"] = "warn"  # skip: drop the step's update on every rank
    window: int = 100  # trailing optimizer steps whose median and MAD say what is typical
    warmup_steps: int = 20  # steps observed before spikes are judged (NaN/Inf are judged always)
    loss_threshold: float = 6.0  # robust z-score of the step loss that makes a spike
    grad_norm_threshold: float = 6.0  # the same for the global gradient norm
    row_loss_threshold: float = 6.0  # the same for one utterance's loss against the typical row spread
    # an utterance that passed this at an earlier appearance is an anomaly when it passes it again
    repeat_threshold: float = 3.5
    min_row_frames: int = 4  # utterances with fewer loss frames are not judged alone (too noisy)
    repro: bool = True  # a repro folder (batch lines, config, checkpoint, command) per NaN/Inf incident
    max_repro_checkpoints: int = 5  # checkpoints saved for repros; later repros use the newest earlier checkpoint


@dataclass
class NestkitConfig:
    seed: int = 0
    dataloader_timeout_s: float = 600.0  # DataLoader `timeout` when num_workers > 0; 0 disables
    log_batches: bool = True  # per-rank log of each step's fingerprint and cut ids
    # The cut index of each corpus (a memory-mapped file every rank shares) is kept beside the data
    # (<manifest folder>/.nestkit-index/, <shar dir>.nkidx/), or here when set (always used for URLs and
    # read-only folders when set; else ~/.cache/nestkit)
    index_cache_dir: Optional[str] = field(default=None, metadata={"path": True})
    # Train without manifest lines that cannot be used (counted, named, recorded in the quarantine)
    # instead of refusing to start; `nestkit train --skip-bad-lines` sets it
    skip_bad_manifest_lines: bool = False
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    straggler: StragglerConfig = field(default_factory=StragglerConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    # cut ids (one per line, '#' comments) that training replaces by deterministic substitutes,
    # as it replaces unloadable cuts: the plan, its signature and the step count stay the same
    exclude_cuts: Optional[str] = field(default=None, metadata={"path": True})


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

TARGETS: dict[type, tuple[str, ...]] = {
    AugmentorConfig: ("MultiSpeakerNoiseAugmentation",),
    PreprocessorConfig: ("AudioToMelSpectrogramPreprocessor",),
    SpecAugmentConfig: ("SpectrogramAugmentation",),
    MaskingConfig: ("RandomBlockMasking",),
    QuantizerConfig: ("RandomProjectionVectorQuantizer",),
    EncoderConfig: ("ConformerEncoder",),
    DecoderConfig: ("MultiSoftmaxDecoder",),
    LossConfig: ("MultiMLMLoss",),
}
