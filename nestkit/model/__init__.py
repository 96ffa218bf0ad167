"""The NEST model: NeMo-compatible module names, state_dict keys and numerics.

Entry points: `NestModel` (build from `ModelConfig`, forward, loss), `checkpoint` (NeMo weights in
and out), `schedule` (AdamW + NoamAnnealing), `NanProbe` (where NaN/Inf first appears).
"""

from nestkit.model.checkpoint import CheckpointError
from nestkit.model.checkpoint import export_nemo_state_dict
from nestkit.model.checkpoint import load_nemo_weights
from nestkit.model.checkpoint import read_state_dict
from nestkit.model.loss import LossResult
from nestkit.model.loss import masked_token_loss
from nestkit.model.nan_probe import NanProbe
from nestkit.model.nan_probe import nonfinite_parameters
from nestkit.model.nest import NestModel
from nestkit.model.nest import NestOutput
from nestkit.model.schedule import build_optimizer
from nestkit.model.schedule import build_scheduler
from nestkit.model.schedule import lr_at_step
from nestkit.model.schedule import noam_lr

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
