"""Derived fields: the values NeMo's YAML fills by `${...}` interpolation (decoder.feat_in follows
encoder.d_model, quantizer.num_classes follows model.num_classes, ...), filled in after loading."""

from __future__ import annotations

from nestkit.config.schema import NestConfig


def derive(cfg: NestConfig) -> None:
    m = cfg.model
    enc = m.encoder
    if m.preprocessor.sample_rate is None:
        m.preprocessor.sample_rate = m.sample_rate
    for ds in (m.train_ds, m.validation_ds):
        if ds is not None:
            ds.sample_rate = m.sample_rate if ds.sample_rate is None else ds.sample_rate
            ds.noise_manifest = ds.noise_manifest or []
            ds.manifest_filepath = ds.manifest_filepath or []  # null beside shar_path, as NeMo configs write it
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
