"""Cross-field checks: settings that are each valid alone but cannot work together (or that NeMo
itself cannot run), every one reported, with the expected and the actual value."""

from __future__ import annotations

from nestkit.config.schema import DatasetConfig, NestConfig


def _check_dataset(ds: DatasetConfig, where: str, problems: list[str]) -> None:
    if not ds.manifest_filepath and ds.shar_path is None:
        problems.append(
            f"{where}.manifest_filepath: required (expected a path or a list of paths, got nothing), "
            "unless shar_path names lhotse Shar data"
        )
    _check_shards(ds, where, problems)
    if (ds.batch_size is None) == (ds.batch_duration is None):
        problems.append(
            f"{where}: set exactly one of batch_size and batch_duration "
            f"(got batch_size={ds.batch_size}, batch_duration={ds.batch_duration})"
        )
    if ds.batch_size is not None and ds.batch_size < 1:
        problems.append(f"{where}.batch_size: must be at least 1 (got {ds.batch_size})")
    if ds.batch_duration is not None and ds.batch_duration <= 0:
        problems.append(f"{where}.batch_duration: must be positive seconds (got {ds.batch_duration})")
    _check_order(ds, where, problems)
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
                problems.append(f"{a}: need 1 <= {low} <= {high} (got {getattr(aug, low)}, {getattr(aug, high)})")


def _check_shards(ds: DatasetConfig, where: str, problems: list[str]) -> None:
    """NeMo's sharded-data keys: what each takes, and which go together."""
    if ds.is_tarred and ds.tarred_audio_filepaths is None:
        problems.append(
            f"{where}.tarred_audio_filepaths: required with is_tarred: true (expected the tars, e.g. "
            "audio__OP_0..511_CL_.tar, got nothing)"
        )
    if ds.tarred_audio_filepaths is not None and not ds.is_tarred:
        problems.append(
            f"{where}.is_tarred: must be true when tarred_audio_filepaths is set (got false); NeMo's classic reader "
            "would read the manifest's own paths and ignore the tars. Set is_tarred: true, or remove the tars"
        )
    if ds.shar_path is not None:
        if ds.is_tarred:
            problems.append(f"{where}: set shar_path or is_tarred, not both (got both)")
        problem = _shar_path_problem(ds.shar_path)
        if problem:
            problems.append(f"{where}.shar_path: {problem}")


def _check_order(ds: DatasetConfig, where: str, problems: list[str]) -> None:
    """The shard-aware order walks shards; per-file audio has none (each file is its own read anyway)."""
    if ds.order == "shards" and ds.shar_path is None and not ds.is_tarred:
        problems.append(
            f"{where}.order: 'shards' needs a sharded corpus (expected shar_path or is_tarred: true, got per-file "
            "manifests). Use order: global, or write the corpus as shards with `nestkit shard`"
        )
    if ds.shard_window < 1:
        problems.append(f"{where}.shard_window: must be at least 1 shard (got {ds.shard_window})")


def _shar_path_problem(spec) -> str | None:
    if isinstance(spec, str):
        return None if spec else "empty (expected a Shar directory)"
    if isinstance(spec, dict):
        missing = [k for k in ("cuts", "recording") if k not in spec]
        bad = [
            k
            for k, v in spec.items()
            if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)))
        ]
        if missing:
            return f"a mapping needs 'cuts' and 'recording' (got keys {sorted(spec)})"
        if bad:
            return f"each field takes a path pattern or a list of paths (got {spec[bad[0]]!r} for {bad[0]})"
        return None
    if isinstance(spec, list) and spec:
        for i, item in enumerate(spec):
            pair = (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], (int, float))
                and not isinstance(item[1], bool)
                and item[1] > 0
            )
            if not (isinstance(item, str) or pair):
                return f"item {i}: expected a directory or [directory, positive weight] (got {item!r})"
        if len({isinstance(item, str) for item in spec}) > 1:
            return "give a weight for every directory or for none (NeMo asserts the same)"
        return None
    return (
        "expected a directory, a list of directories or of [directory, weight], or "
        f"{{cuts: ..., recording: ...}} (got {spec!r})"
    )


def check(cfg: NestConfig, problems: list[str]) -> None:
    """Append every cross-field problem of a built, derived config to `problems`."""
    m = cfg.model
    if m.train_ds is not None:
        _check_dataset(m.train_ds, "model.train_ds", problems)
    if m.validation_ds is not None:
        _check_dataset(m.validation_ds, "model.validation_ds", problems)
    _check_sample_rates(cfg, problems)
    _check_encoder(cfg, problems)
    _check_preprocessor(cfg, problems)
    _check_heads(cfg, problems)
    _check_optim(cfg, problems)
    _check_trainer(cfg, problems)
    _check_exp_manager(cfg, problems)
    _check_nestkit(cfg, problems)


def _check_sample_rates(cfg: NestConfig, problems: list[str]) -> None:
    m = cfg.model
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


def _check_encoder(cfg: NestConfig, problems: list[str]) -> None:
    m = cfg.model
    enc = m.encoder
    if enc.subsampling_factor not in (2, 4, 8, 16, 32):
        problems.append(
            f"model.encoder.subsampling_factor: must be a power of 2 from 2 to 32 (got {enc.subsampling_factor})"
        )
    if enc.d_model % enc.n_heads:
        problems.append(f"model.encoder: d_model must be divisible by n_heads (got {enc.d_model} and {enc.n_heads})")
    if enc.d_model % 2:
        problems.append(
            f"model.encoder.d_model: must be even (position encodings come in sin/cos pairs; got {enc.d_model})"
        )
    chunking = enc.subsampling_conv_chunking_factor
    if chunking not in (-1, 1) and (chunking < 2 or chunking & (chunking - 1)):
        problems.append(
            f"model.encoder.subsampling_conv_chunking_factor: unsupported (expected -1, 1 or a power of 2, got {chunking})"
        )
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


def _check_preprocessor(cfg: NestConfig, problems: list[str]) -> None:
    m = cfg.model
    pre = m.preprocessor
    for seconds, samples in (("window_size", "n_window_size"), ("window_stride", "n_window_stride")):
        if getattr(pre, seconds) is None and not getattr(pre, samples):
            problems.append(
                f"model.preprocessor.{seconds}: required when {samples} is not set (expected seconds, got null)"
            )
    window = pre.n_window_size or int((pre.window_size or 0) * m.sample_rate)
    if pre.n_fft is not None and window and pre.n_fft < window:
        problems.append(
            f"model.preprocessor.n_fft: shorter than the window (expected at least {window} samples, got {pre.n_fft})"
        )


def _check_heads(cfg: NestConfig, problems: list[str]) -> None:
    """Masking, quantizer, decoder and loss must agree with each other and with the encoder."""
    m = cfg.model
    enc = m.encoder
    enc_out = enc.feat_out if enc.feat_out > 0 else enc.d_model
    if m.decoder.feat_in != enc_out:
        problems.append(
            f"model.decoder.feat_in: must equal the encoder's output size (expected {enc_out}, got {m.decoder.feat_in})"
        )
    expected_feat = m.preprocessor.features if m.mask_position == "pre_conv" else enc.d_model
    if m.masking.feat_in != expected_feat:
        problems.append(
            f"model.masking.feat_in: must match mask_position={m.mask_position} "
            f"(expected {expected_feat}, got {m.masking.feat_in})"
        )
    q = m.quantizer
    if q.feat_in != expected_feat:
        problems.append(
            f"model.quantizer.feat_in: must match mask_position={m.mask_position} (expected {expected_feat}, got {q.feat_in})"
        )
    if q.time_ahead:
        problems.append(
            "model.quantizer.time_ahead: not supported by the NEST model (expected false: the model gives "
            "the quantizer (B, D, T) features; got true)"
        )
    for name, expected in (("num_classes", m.num_classes), ("num_books", m.num_books)):
        if getattr(q, name) != expected:
            problems.append(
                f"model.quantizer.{name}: must equal model.{name} (expected {expected}, got {getattr(q, name)})"
            )
    if m.decoder.num_classes != q.num_classes:
        problems.append(
            f"model.decoder.num_classes: must equal the quantizer's (expected {q.num_classes}, got {m.decoder.num_classes})"
        )
    if m.decoder.num_decoders != q.num_books:
        problems.append(
            f"model.decoder.num_decoders: must equal the number of codebooks (expected {q.num_books}, got {m.decoder.num_decoders})"
        )
    if m.loss.combine_time_steps != q.combine_time_steps:
        problems.append(
            f"model.loss.combine_time_steps: must equal model.quantizer.combine_time_steps "
            f"(expected {q.combine_time_steps}, got {m.loss.combine_time_steps})"
        )
    if not 0.0 <= m.masking.mask_prob <= 1.0:
        problems.append(f"model.masking.mask_prob: must be in [0, 1] (got {m.masking.mask_prob})")
    if m.masking.block_size < 1:
        problems.append(f"model.masking.block_size: must be at least 1 frame (got {m.masking.block_size})")


def _check_optim(cfg: NestConfig, problems: list[str]) -> None:
    optim = cfg.model.optim
    if len(optim.betas) != 2:
        problems.append(f"model.optim.betas: expected two numbers (got {optim.betas})")
    sched = optim.sched
    if sched is not None and sched.warmup_steps is not None and sched.warmup_ratio is not None:
        problems.append("model.optim.sched: set warmup_steps or warmup_ratio, not both")


# What Lightning 2 accepts for `precision` (NeMo configs say 16, 32 or bf16; nestkit maps them).
PRECISIONS = ("16", "32", "64", "bf16", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "32-true", "64-true")


def _devices_problem(devices) -> str | None:
    """Lightning's `devices`: a count >= 1, -1 / "auto" (every GPU), a list of GPU ids, or "0,1"."""
    if isinstance(devices, bool):
        return "expected a number of devices"
    if isinstance(devices, int):
        return None if devices >= 1 or devices == -1 else "expected at least 1, or -1 for every GPU"
    if isinstance(devices, list):
        if not devices:
            return "expected at least one GPU id"
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in devices):
            return "expected GPU ids >= 0"
        return "expected each GPU id once" if len(set(devices)) != len(devices) else None
    text = str(devices).strip()
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if text in ("auto", "-1") or (
        ids and all(i.isdigit() for i in ids) and (len(ids) > 1 or "," in text or int(ids[0]) >= 1)
    ):
        return None
    return "expected a number >= 1, -1 or 'auto' for every GPU, or GPU ids like '0,1'"


def _fraction_or_count_problem(value) -> str | None:
    """Lightning's limit_*_batches and val_check_interval: a count >= 0 (int) or a fraction in [0, 1]."""
    if isinstance(value, bool):
        return "expected a count or a fraction"
    if isinstance(value, int):
        return None if value >= 0 else "expected a count >= 0"
    return None if 0.0 <= value <= 1.0 else "expected a fraction in [0, 1] or a whole count"


def _check_trainer(cfg: NestConfig, problems: list[str]) -> None:
    t = cfg.trainer
    devices_problem = _devices_problem(t.devices)
    if devices_problem:
        problems.append(f"trainer.devices: {devices_problem} (got {t.devices!r})")
    if t.num_nodes < 1:
        problems.append(f"trainer.num_nodes: must be at least 1 (got {t.num_nodes})")
    if str(t.precision) not in PRECISIONS:
        problems.append(f"trainer.precision: unknown (expected one of {', '.join(PRECISIONS)}; got {t.precision!r})")
    if t.gradient_clip_val is not None and t.gradient_clip_val < 0:
        problems.append(f"trainer.gradient_clip_val: must not be negative, 0 = no clipping (got {t.gradient_clip_val})")
    if t.log_every_n_steps < 0:
        problems.append(
            f"trainer.log_every_n_steps: must not be negative, 0 = no metric logging (got {t.log_every_n_steps})"
        )
    interval = t.val_check_interval
    if interval is not None and (_fraction_or_count_problem(interval) or interval == 0):
        problems.append(
            f"trainer.val_check_interval: expected a number of steps >= 1 or a fraction of an epoch in (0, 1] (got {interval})"
        )
    for name in ("limit_train_batches", "limit_val_batches"):
        value = getattr(t, name)
        problem = _fraction_or_count_problem(value) if value is not None else None
        if problem:
            problems.append(f"trainer.{name}: {problem} (got {value})")
    if t.max_steps <= 0 and t.max_epochs <= 0:
        problems.append(
            f"trainer: set max_steps or max_epochs (got max_steps={t.max_steps}, max_epochs={t.max_epochs})"
        )
    if t.accumulate_grad_batches < 1:
        problems.append(f"trainer.accumulate_grad_batches: must be at least 1 (got {t.accumulate_grad_batches})")
    inits = [n for n in ("init_from", "init_from_nemo_model", "init_from_ptl_ckpt") if getattr(cfg, n)]
    if len(inits) > 1:
        problems.append(f"{' and '.join(inits)}: set only one checkpoint to initialise from")


def _check_exp_manager(cfg: NestConfig, problems: list[str]) -> None:
    ckpt = cfg.exp_manager.checkpoint_callback_params
    where = "exp_manager.checkpoint_callback_params"
    if ckpt.every_n_train_steps is not None and ckpt.every_n_train_steps < 0:
        problems.append(
            f"{where}.every_n_train_steps: must be a number of steps >= 1, or 0 / null for no periodic checkpoints "
            f"(got {ckpt.every_n_train_steps})"
        )
    for name, meaning in (("save_top_k", "best checkpoints kept"), ("keep_periodic", "periodic checkpoints kept")):
        if getattr(ckpt, name) < -1:
            problems.append(f"{where}.{name}: {meaning}, must be >= 0, or -1 for all (got {getattr(ckpt, name)})")


def _check_nestkit(cfg: NestConfig, problems: list[str]) -> None:
    w = cfg.nestkit.watchdog
    if w.stall_timeout_s is not None and w.stall_timeout_s <= 0:
        problems.append(f"nestkit.watchdog.stall_timeout_s: must be positive seconds or null (got {w.stall_timeout_s})")
    for name in (
        "min_stall_timeout_s",
        "first_step_timeout_s",
        "slow_phase_timeout_s",
        "slow_data_timeout_s",
        "poll_interval_s",
        "heartbeat_interval_s",
        "stall_factor",
    ):
        if getattr(w, name) <= 0:
            problems.append(f"nestkit.watchdog.{name}: must be positive (got {getattr(w, name)})")
    if w.dump_grace_s < 0:
        problems.append(f"nestkit.watchdog.dump_grace_s: must not be negative seconds (got {w.dump_grace_s})")
    s = cfg.nestkit.straggler
    if s.factor <= 1:
        problems.append(
            f"nestkit.straggler.factor: must be above 1 (a rank slower than its peers by this factor; got {s.factor})"
        )
    if s.min_excess_s < 0:
        problems.append(f"nestkit.straggler.min_excess_s: must not be negative seconds (got {s.min_excess_s})")
    for name in ("min_steps", "checks"):
        if getattr(s, name) < 1:
            problems.append(f"nestkit.straggler.{name}: must be at least 1 (got {getattr(s, name)})")
    if s.check_interval_s <= 0:
        problems.append(f"nestkit.straggler.check_interval_s: must be positive seconds (got {s.check_interval_s})")
    if cfg.nestkit.index_cache_dir is not None and not cfg.nestkit.index_cache_dir:
        problems.append("nestkit.index_cache_dir: empty (expected a folder, or null for beside the data)")
    _check_anomaly(cfg, problems)
    if cfg.nestkit.dataloader_timeout_s < 0:
        problems.append(
            f"nestkit.dataloader_timeout_s: must be >= 0 seconds, 0 = unbounded (got {cfg.nestkit.dataloader_timeout_s})"
        )


# a MAD of fewer values is too often near 0 by chance: ordinary noise would look like a spike
MIN_ANOMALY_WARMUP = 10


def _check_anomaly(cfg: NestConfig, problems: list[str]) -> None:
    a = cfg.nestkit.anomaly
    if a.window < MIN_ANOMALY_WARMUP:
        problems.append(
            f"nestkit.anomaly.window: too short for a median and MAD (expected at least {MIN_ANOMALY_WARMUP} steps, got {a.window})"
        )
    for name in ("min_row_frames", "max_repro_checkpoints"):
        if getattr(a, name) < 0:
            problems.append(f"nestkit.anomaly.{name}: must not be negative (got {getattr(a, name)})")
    if a.warmup_steps < MIN_ANOMALY_WARMUP:
        problems.append(
            "nestkit.anomaly.warmup_steps: too few steps to know what is typical "
            f"(expected at least {MIN_ANOMALY_WARMUP}, got {a.warmup_steps})"
        )
    if a.warmup_steps > a.window:
        problems.append(
            f"nestkit.anomaly.warmup_steps: longer than the window it fills (expected at most window={a.window}, got {a.warmup_steps})"
        )
    for name in ("loss_threshold", "grad_norm_threshold", "row_loss_threshold", "repeat_threshold"):
        if getattr(a, name) <= 0:
            problems.append(f"nestkit.anomaly.{name}: must be a positive robust z-score (got {getattr(a, name)})")
    if a.repeat_threshold > a.row_loss_threshold:
        problems.append(
            "nestkit.anomaly.repeat_threshold: above row_loss_threshold, so it would never matter "
            f"(expected at most {a.row_loss_threshold}, got {a.repeat_threshold})"
        )
