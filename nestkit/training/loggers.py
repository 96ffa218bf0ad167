"""The metric loggers of a run: NeMo's exp_manager switches mapped to Lightning's own loggers.

CSV and TensorBoard are always installed. W&B and MLflow are optional extras (`nestkit[wandb]`,
`nestkit[mlflow]`); asking for one that is not installed is a one-line error naming the extra,
before training starts. A W&B or MLflow run is started here, on rank zero, so that a missing
login or an unusable tracking URI is reported before the first step instead of inside it.
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path

from nestkit.config import MLFlowLoggerConfig, NestConfig
from nestkit.core.errors import ConfigError, NestkitError
from nestkit.training.devices import is_global_rank_zero

EXTRAS = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow-skinny")}  # module, pip package
# Newer MLflow refuses a file store unless asked to allow it; a file store is what NeMo's default
# (save_dir ./mlruns) and a `file:` tracking URI name, so a config that asks for one gets one.
MLFLOW_ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"


def build_loggers(cfg: NestConfig, run_dir: Path) -> list:
    """Lightning loggers for the run, in NeMo's order: TensorBoard, W&B, MLflow (CSV first: nestkit's own)."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    em = cfg.exp_manager
    loggers: list = []
    if em.create_csv_logger:
        # one version folder per start: a resumed run must not overwrite the earlier metrics.csv
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv"))
    if em.create_tensorboard_logger:
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False))
    if em.create_wandb_logger:
        hint = "Log in (`wandb login` or WANDB_API_KEY) or run offline (WANDB_MODE=offline)"
        loggers.append(_start(_wandb_logger(cfg, run_dir), "create_wandb_logger", "W&B", hint))
    if em.create_mlflow_logger:
        hint = "Check exp_manager.mlflow_logger_kwargs (tracking_uri, experiment_name, run_id)"
        loggers.append(_start(_mlflow_logger(cfg, run_dir), "create_mlflow_logger", "MLflow", hint))
    return loggers


def require_extra(extra: str, switch: str) -> None:
    """Import the extra's package, or a one-line error naming the extra to install."""
    module, package = EXTRAS[extra]
    try:
        __import__(module)
    except ImportError as exc:
        raise NestkitError(
            f"exp_manager.{switch}: needs the {package} package, which does not import ({exc}). "
            f"Install it with `pip install 'nestkit[{extra}]'`, or set exp_manager.{switch}=false"
        ) from None


def _wandb_logger(cfg: NestConfig, run_dir: Path):
    require_extra("wandb", "create_wandb_logger")
    from pytorch_lightning.loggers import WandbLogger

    kwargs = dict(cfg.exp_manager.wandb_logger_kwargs or {})
    _check_wandb_keys(kwargs, _accepted_wandb_keys(), "exp_manager.wandb_logger_kwargs")
    if kwargs.get("save_dir") is None:  # NeMo: the experiment folder; here the run folder holds everything
        kwargs["save_dir"] = str(run_dir)
    os.makedirs(kwargs["save_dir"], exist_ok=True)
    return WandbLogger(**kwargs)


def _accepted_wandb_keys() -> set[str]:
    """WandbLogger's own parameters plus those of wandb.init, to which it passes the rest."""
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    accepted = set(inspect.signature(WandbLogger.__init__).parameters) | set(inspect.signature(wandb.init).parameters)
    return accepted - {"self", "kwargs"}


def _mlflow_logger(cfg: NestConfig, run_dir: Path):
    require_extra("mlflow", "create_mlflow_logger")
    from pytorch_lightning.loggers import MLFlowLogger

    em = cfg.exp_manager
    params = em.mlflow_logger_kwargs or MLFlowLoggerConfig()
    tracking_uri = params.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if tracking_uri is None or tracking_uri.startswith("file:"):
        os.environ.setdefault(MLFLOW_ALLOW_FILE_STORE, "true")
    return MLFlowLogger(
        experiment_name=params.experiment_name or em.name or cfg.name,
        run_name=run_dir.name,
        tracking_uri=tracking_uri,
        tags=params.tags,
        save_dir=params.save_dir or str(run_dir / "mlruns"),
        prefix=params.prefix,
        artifact_location=params.artifact_location,
        run_id=params.run_id,
    )


def _start(logger, switch: str, service: str, hint: str):
    """Start the logger's run now on rank zero (the other ranks never log)."""
    if is_global_rank_zero():
        try:
            logger.experiment  # noqa: B018 - the property starts the run
        except Exception as exc:  # a login, a server, a permission: whatever the service says, in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise NestkitError(
                f"exp_manager.{switch}: {service} could not start a run ({type(exc).__name__}: {first}). "
                f"{hint}, or set exp_manager.{switch}=false"
            ) from None
    return logger


def _check_wandb_keys(given: dict, accepted: set[str], where: str) -> None:
    problems = []
    for key in sorted(set(given) - accepted):
        close = difflib.get_close_matches(key, sorted(accepted), n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        problems.append(f"{where}.{key}: unknown key (not a WandbLogger or wandb.init parameter).{hint}")
    if problems:
        raise ConfigError(problems)
