"""NeMo's exp_manager logger switches on real, offline backends: a W&B offline run and a local MLflow
file store hold the train_loss values the run's own CSV log holds."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from tests.helpers import run_nestkit, write_train_config

NEMO_YAML = Path(__file__).parents[1] / "fixtures" / "nemo_nest_fast_conformer.yaml"
TINY = [  # NeMo's Large encoder, shrunk so that a few CPU steps take seconds
    "model.encoder.n_layers=1",
    "model.encoder.d_model=32",
    "model.encoder.n_heads=2",
    "model.encoder.subsampling_conv_channels=16",
    "model.num_classes=64",
    "model.train_ds.batch_size=2",
    "model.train_ds.num_workers=0",
    "model.validation_ds.num_workers=0",
    "trainer.devices=1",
    "trainer.log_every_n_steps=1",
]
STEPS = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from nestkit.data.synthetic import make_corpus

    return make_corpus(tmp_path_factory.mktemp("loggers"), num_utterances=10, num_noises=2, min_seconds=1.2, seed=4)


def csv_losses(run: Path) -> dict[int, float]:
    [metrics] = run.glob("csv/version_*/metrics.csv")
    with open(metrics) as f:
        return {int(row["step"]): float(row["train_loss"]) for row in csv.DictReader(f) if row.get("train_loss")}


def wandb_records(path: Path):
    """The records of a W&B run file: a LevelDB-style log (7-byte file header, then chunks of
    crc32(4) length(2, little-endian) type(1: whole, 2: first, 3: middle, 4: last) in 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", "not a W&B run file"
    position, pending = 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


@pytest.mark.slow
def test_nemos_own_wandb_switch_writes_an_offline_run_with_the_train_loss(tmp_path, corpus):
    """NeMo's example command turns W&B on with a name and a project; offline, the run is a folder."""
    result = run_nestkit(
        "train",
        str(NEMO_YAML),
        f"model.train_ds.manifest_filepath={corpus['train']}",
        f"model.validation_ds.manifest_filepath={corpus['validation']}",
        *TINY,
        f"trainer.max_steps={STEPS}",
        f"exp_manager.exp_dir={tmp_path}",
        "exp_manager.create_wandb_logger=True",
        "exp_manager.wandb_logger_kwargs.name=nest-offline",
        "exp_manager.wandb_logger_kwargs.project=nestkit-tests",
        cwd=tmp_path,
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "SSL-NEST-FastConformer"
    [run_file] = run.glob("wandb/offline-run-*/run-*.wandb")  # under the run folder
    logged = {}
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            if "train_loss" in items:
                logged[int(items["trainer/global_step"])] = float(items["train_loss"])
    expected = csv_losses(run)
    assert len(expected) == STEPS and logged == expected


@pytest.mark.slow
def test_mlflow_file_store_holds_the_metrics(tmp_path, corpus):
    store = tmp_path / "store"
    config = write_train_config(
        tmp_path / "c.yaml",
        corpus["train"],
        name="flow",
        trainer={"max_steps": STEPS},
        exp_manager={
            "create_mlflow_logger": True,
            "mlflow_logger_kwargs": {"experiment_name": "nest", "tracking_uri": f"file:{store}", "tags": {"k": "v"}},
        },
    )
    # unset: nestkit allows the file store the config asks for (newer MLflow refuses one by default)
    result = run_nestkit(
        "train", config, cwd=tmp_path, env={"MLFLOW_ALLOW_FILE_STORE": None, "MLFLOW_TRACKING_URI": None}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [metric] = store.glob("*/*/metrics/train_loss")  # <experiment id>/<run id>/metrics/<name>
    run_folder = metric.parents[1]
    lines = [line.split() for line in metric.read_text().splitlines()]  # timestamp value step
    assert {int(step): float(value) for _, value, step in lines} == csv_losses(tmp_path / "runs" / "flow")
    assert (run_folder / "tags" / "k").read_text() == "v"
    assert (run_folder / "tags" / "mlflow.runName").read_text() == "flow"  # the run folder's name


@pytest.mark.parametrize("extra, switch", [("wandb", "create_wandb_logger"), ("mlflow", "create_mlflow_logger")])
def test_a_missing_package_names_the_extra_to_install(tmp_path, corpus, extra, switch):
    config = write_train_config(
        tmp_path / "c.yaml", corpus["train"], name="x", trainer={"max_steps": 1}, exp_manager={switch: True}
    )
    # the package made unimportable for this process, as in an environment without the extra
    blocked = [sys.executable, "-c", f"import sys; sys.modules[{extra!r}] = None; from nestkit.cli import main; main()"]
    result = run_nestkit("train", config, cwd=tmp_path, python=blocked)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: exp_manager.{switch}: needs the" in result.stderr
    assert f"Install it with `pip install 'nestkit[{extra}]'`" in result.stderr


def test_an_unknown_wandb_key_is_named_with_a_suggestion(tmp_path, corpus):
    config = write_train_config(
        tmp_path / "c.yaml",
        corpus["train"],
        name="x",
        trainer={"max_steps": 1},
        exp_manager={"create_wandb_logger": True, "wandb_logger_kwargs": {"projct": "p"}},
    )
    result = run_nestkit("train", config, cwd=tmp_path, env={"WANDB_MODE": "offline"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "exp_manager.wandb_logger_kwargs.projct: unknown key" in result.stderr and "'project'" in result.stderr
