"""Typed configuration, read from NeMo-style YAML.

nestkit accepts NeMo's `nest_fast-conformer.yaml` unchanged (model / trainer / exp_manager,
`_target_` entries naming NeMo classes, `${...}` interpolation) and a short native config that sets
only what differs from those defaults. Every key is checked up front and every problem is reported
at once. The parts:

    schema.py   the dataclasses, with NeMo's defaults
    coerce.py   plain YAML data -> dataclasses (types, unknown keys, `_target_`, inert NeMo keys)
    derive.py   fields that follow other fields (NeMo's interpolations)
    checks.py   cross-field checks
    load.py     YAML files, overrides, relative paths, saving
"""

from nestkit.config.load import LoadedConfig, config_from_dict, config_to_dict, load_config, save_config
from nestkit.config.schema import (
    AugmentorConfig,
    CheckpointConfig,
    DatasetConfig,
    DecoderConfig,
    EncoderConfig,
    ExpManagerConfig,
    LossConfig,
    MaskingConfig,
    MLFlowLoggerConfig,
    ModelConfig,
    NestConfig,
    NestkitConfig,
    OptimConfig,
    PreprocessorConfig,
    QuantizerConfig,
    SchedConfig,
    SpecAugmentConfig,
    StragglerConfig,
    TrainerConfig,
    WatchdogConfig,
)

__all__ = [
    "AugmentorConfig",
    "CheckpointConfig",
    "DatasetConfig",
    "DecoderConfig",
    "EncoderConfig",
    "ExpManagerConfig",
    "LoadedConfig",
    "LossConfig",
    "MaskingConfig",
    "MLFlowLoggerConfig",
    "ModelConfig",
    "NestConfig",
    "NestkitConfig",
    "OptimConfig",
    "PreprocessorConfig",
    "QuantizerConfig",
    "SchedConfig",
    "SpecAugmentConfig",
    "TrainerConfig",
    "StragglerConfig",
    "WatchdogConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
]
