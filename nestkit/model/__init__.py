"""The NEST model: NeMo-compatible module names, state_dict keys and numerics.

Entry points: `NestModel` (build from `ModelConfig`, forward, loss), `checkpoint` (NeMo weights in
and out), `schedule` (AdamW + NoamAnnealing), `NanProbe` (where NaN/Inf first appears).
"""

from nestkit.model.checkpoint import CheckpointError, export_nemo_state_dict, load_nemo_weights, read_state_dict
from nestkit.model.loss import LossResult, masked_token_loss
from nestkit.model.nan_probe import NanProbe, nonfinite_parameters
from nestkit.model.nest import NestModel, NestOutput
from nestkit.model.schedule import build_optimizer, build_scheduler, lr_at_step, noam_lr

__all__ = [
    "CheckpointError",
    "LossResult",
    "NanProbe",
    "NestModel",
    "NestOutput",
    "build_optimizer",
    "build_scheduler",
    "export_nemo_state_dict",
    "load_nemo_weights",
    "lr_at_step",
    "masked_token_loss",
    "noam_lr",
    "nonfinite_parameters",
    "read_state_dict",
]
