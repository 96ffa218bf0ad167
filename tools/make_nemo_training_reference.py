"""Write NeMo training-curve fixtures (tests/fixtures/nemo_training/) for nestkit's training parity test.

NOT RUN BY CI: it imports NeMo, which nestkit never depends on. Run it by hand, from the repository
root, in an environment with nemo-toolkit 2.6.2 in which nestkit imports too (the fixtures in the
repo were made with nemo-toolkit 2.6.2, torch 2.13.0+cpu, lightning 2.4.0, pytorch-lightning 2.6.6,
one thread; a rerun reproduces every array and tensor bit for bit):

    python3 -m venv /tmp/venv-nemo
    /tmp/venv-nemo/bin/pip install torch==2.13.0
    /tmp/venv-nemo/bin/pip install 'nemo_toolkit[asr]==2.6.2' orjson rich typer pytest
    PYTHONPATH=$PWD /tmp/venv-nemo/bin/python tools/make_nemo_training_reference.py [--out DIR] [--only CASE ...]

(orjson, rich and typer are nestkit dependencies NeMo lacks; pytest because the nestkit half runs
the test module's own helpers, so the export NeMo continues from is made exactly as the test makes it.)

Per case (the golden tiny config with the case's settings, every dropout 0):
1. build NeMo's EncDecDenoiseMaskedTokenPredModel with a seeded torch RNG, give every 1-d parameter
   random values and round every float32 tensor to a float16-representable value (as
   make_nemo_reference.py does): the initial state_dict;
2. train it with NeMo's own machinery: a Lightning Trainer (the YAML's trainer settings, one CPU
   device) running the model's training_step and configure_optimizers (AdamW + NoamAnnealing from
   `optim`, stepped by Lightning after every optimiser step) on a fixed plan of batches drawn from
   an int16 PCM pool, with torch.manual_seed(seed_int(seed, "model", 0, g)) immediately before the
   training_step of batch g: nestkit's random stream for plan position (epoch 0, batch g) on one
   rank. Recorded: each step's loss, learning rate and gradient norm, the state_dict after the last
   step, and the losses of NeMo training on from those final weights over the next batches (a fresh
   optimiser and schedule, as a run initialised from weights);
3. the export direction: nestkit trains the same steps from the same weights (the test's helper),
   its Lightning checkpoint is exported as `nestkit export-nemo` does, and NeMo loads the export
   strictly and trains on over the next batches as in 2; its losses are recorded;
4. the gaps the README reports: nestkit against NeMo, and NeMo against itself run with two torch
   threads instead of one (another reduction order, nothing else): the drift rounding alone causes.

Outputs: audio_pool.npz (clean and noisy int16 PCM rows and their lengths, shared by the cases),
and per case CASE.config.yaml (what NeMo was given, plus nestkit's seed), CASE.initial.pt (float16,
exact), CASE.final.pt (the float32/int64 entries NeMo's training changed), CASE.npz (plan, loss, lr,
grad_norm, nemo_continued_loss, export_nemo_loss, export_nestkit_loss; meta_json with seeds,
versions and the measured gaps).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "tests/training"))
sys.path.insert(0, str(REPO))

from make_nemo_reference import PCM_SCALE, build_config, randomise_and_round, synth_batch  # noqa: E402

from nestkit.core.rng import seed_int  # noqa: E402

OUT_DIR = REPO / "tests/fixtures/nemo_training"
TORCH_THREADS = 1
STEPS = 32  # optimiser steps NeMo trains from the initial weights
CONTINUED_STEPS = 3  # steps NeMo trains on from nestkit's export
BATCH_SIZE = 3  # utterances per batch, drawn from the pool without repetition
# The pool: long enough (1.7-3 s) that mask_prob 0.01 masks a loss group in every batch
POOL_SECONDS = (2.6, 2.0, 3.0, 2.3, 1.7, 2.8)
POOL_AUDIO_SEED = 2026
# NoamAnnealing warm-up: the rate rises for WARMUP steps and decays (s^-0.5) for the rest of the run
WARMUP_STEPS = 12

CASES: dict[str, dict] = {
    # the golden tiny config as it is (dropouts 0), its optimiser scaled for a 32-step run
    "golden_tiny": dict(settings={}, lr=0.1, init_seed=31, plan_seed=41, seed=7),
    # several codebooks, plus the two other random draws of a step (dither and stochastic depth),
    # and 100x the YAML's weight decay: at 1e-3 decay moves weights by ~1e-4 of what the gradients
    # do, about the rounding drift; at 0.1 a decay applied differently (another parameter group,
    # Adam's coupled L2) moves them by ~1e-2 of it, far above it
    "books4_dither_depth": dict(
        settings={
            "num_books": 4,
            "num_classes": 128,
            "encoder.d_model": 48,
            "encoder.n_heads": 4,
            "encoder.n_layers": 3,
            "encoder.ff_expansion_factor": 2,
            "encoder.subsampling_conv_channels": 16,
            "preprocessor.dither": 1e-5,
            "encoder.stochastic_depth_drop_prob": 0.3,
            "masking.mask_prob": 0.05,
            "optim.weight_decay": 0.1,
        },
        lr=0.1,
        init_seed=32,
        plan_seed=42,
        seed=8,
    ),
}


# -- inputs ------------------------------------------------------------------------------------


def make_pool() -> dict[str, np.ndarray]:
    batch = synth_batch(POOL_AUDIO_SEED, POOL_SECONDS)
    return {"audio_pcm": batch["audio_pcm"], "noisy_pcm": batch["noisy_pcm"], "audio_len": batch["audio_len"]}


def make_plan(plan_seed: int, batches: int, pool_size: int) -> np.ndarray:
    """(batches, BATCH_SIZE) pool rows: which utterances each batch holds, in which order."""
    rng = np.random.Generator(np.random.PCG64(plan_seed))
    return np.stack([rng.choice(pool_size, size=BATCH_SIZE, replace=False) for _ in range(batches)]).astype(np.int16)


def case_config(spec: dict, steps: int):
    """NeMo's config of a case: the golden tiny config with the case's settings, every dropout 0, the
    case's learning-rate scale and warm-up, a trainer section for one CPU device, and nestkit's seed."""
    cfg = build_config(spec["settings"], "train")  # "train": every dropout 0, so dropout draws nothing
    cfg.model.optim.lr = spec["lr"]
    cfg.model.optim.sched.warmup_steps = WARMUP_STEPS
    t = cfg.trainer
    t.devices, t.accelerator, t.strategy, t.max_steps = 1, "cpu", "auto", steps
    t.sync_batchnorm = False  # one device
    cfg.nestkit = {"seed": spec["seed"]}
    return cfg


def nemo_batches(pool: dict[str, np.ndarray], plan: np.ndarray, first: int, count: int) -> list:
    from nemo.collections.asr.data.ssl_dataset import AudioNoiseBatch

    batches = []
    for rows in plan[first : first + count].astype(np.int64):
        lengths = torch.from_numpy(pool["audio_len"][rows].astype(np.int64))
        width = int(lengths.max())
        clean = torch.from_numpy(pool["audio_pcm"][rows, :width].astype(np.float32) / PCM_SCALE)
        noisy = torch.from_numpy(pool["noisy_pcm"][rows, :width].astype(np.float32) / PCM_SCALE)
        batches.append(
            AudioNoiseBatch(
                sample_id=None,
                audio=clean,
                audio_len=lengths,
                noise=noisy - clean,
                noise_len=lengths.clone(),
                noisy_audio=noisy,
                noisy_audio_len=lengths.clone(),
            )
        )
    return batches


# -- NeMo's training ---------------------------------------------------------------------------


def nemo_trainer(cfg, steps: int, callbacks: list):
    """A Lightning Trainer with the YAML's training settings, on one CPU device, recording nothing to disk."""
    from lightning.pytorch import Trainer

    t = cfg.trainer
    return Trainer(
        accelerator="cpu",
        devices=1,
        strategy="auto",
        max_steps=steps,
        max_epochs=-1,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val or None,
        precision=t.precision,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def seed_before_each_training_step(model, seed: int, first: int) -> None:
    """torch.manual_seed(seed_int(seed, "model", 0, g)) immediately before NeMo's training_step of
    plan batch g = first + batch_idx: NeMo draws masks, dither and stochastic depth from the global RNG."""
    plain = model.training_step

    def seeded(batch, batch_idx):
        torch.manual_seed(seed_int(seed, "model", 0, first + batch_idx))
        return plain(batch, batch_idx)

    model.training_step = seeded


def make_recorder():
    from lightning.pytorch import Callback

    class Recorder(Callback):
        def __init__(self):
            self.lr, self.grad_norm, self.loss = [], [], []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.lr.append(optimizer.param_groups[0]["lr"])
            grads = [p.grad.detach().norm() for p in pl_module.parameters() if p.grad is not None]
            self.grad_norm.append(float(torch.linalg.vector_norm(torch.stack(grads))))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.loss.append(float(outputs["loss"].detach()))

    return Recorder()


def train_nemo(cfg, state: dict, batches: list, seed: int, first: int):
    """NeMo's model from `state`, trained on `batches` (plan batches first, first + 1, ...)."""
    from nemo.collections.asr.models.ssl_models import EncDecDenoiseMaskedTokenPredModel

    recorder = make_recorder()
    trainer = nemo_trainer(cfg, len(batches), [recorder])
    model = EncDecDenoiseMaskedTokenPredModel(copy.deepcopy(cfg.model), trainer=trainer)
    model.load_state_dict(state, strict=True)
    seed_before_each_training_step(model, seed, first)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    trainer.fit(model, train_dataloaders=loader)
    assert trainer.global_step == len(batches)
    losses = np.array(recorder.loss)
    assert np.isfinite(losses).all() and (losses > 0).all(), f"a step masked no loss group: {losses}"
    return model, recorder


def initial_state(cfg, init_seed: int) -> dict[str, torch.Tensor]:
    from nemo.collections.asr.models.ssl_models import EncDecDenoiseMaskedTokenPredModel

    torch.manual_seed(init_seed)
    model = EncDecDenoiseMaskedTokenPredModel(copy.deepcopy(cfg.model))
    randomise_and_round(model, init_seed + 1)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed_entries(start: dict, end: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in end.items() if not torch.equal(v, start[k])}


# -- the export direction, and the gaps the README reports ---------------------------------------


def curve_gaps(parity, case, recorder, state: dict) -> dict:
    """How far a run (its recorder and final state_dict) is from NeMo's recorded one."""
    gaps = {}
    for key in ("loss", "lr", "grad_norm"):
        ours, theirs = np.array(getattr(recorder, key)), case.arrays[key]
        gaps[f"{key}_rel"] = float(parity.relative_gap(ours, theirs).max())
        gaps[f"{key}_abs"] = float(np.abs(ours - theirs).max())
    return {**gaps, **parity.weight_gaps(case, state)}


def nemo_thread_floor(parity, case, cfg, spec: dict, pool, plan) -> dict:
    """NeMo against itself: the same run with two torch threads instead of one (other reduction
    orders, nothing else): the scale of rounding-driven drift over the run."""
    torch.set_num_threads(2 * TORCH_THREADS)
    try:
        model, recorder = train_nemo(cfg, case.initial, nemo_batches(pool, plan, 0, STEPS), spec["seed"], 0)
        _, continued = train_nemo(
            cfg, model.state_dict(), nemo_batches(pool, plan, STEPS, CONTINUED_STEPS), spec["seed"], STEPS
        )
    finally:
        torch.set_num_threads(TORCH_THREADS)
    gaps = curve_gaps(parity, case, recorder, model.state_dict())
    gaps["final_model_loss_rel"] = float(parity.relative_gap(continued.loss, case.arrays["nemo_continued_loss"]).max())
    return gaps


def nestkit_then_nemo(name: str, cfg, spec: dict, pool, plan, out_dir: Path, work_dir: Path) -> dict:
    """nestkit trains the case (the test's own helper) and is measured against NeMo's curve; its
    checkpoint is exported as `nestkit export-nemo` does; NeMo loads the export strictly and trains
    on, and so does nestkit from the same export. Needs the case's fixture files written already."""
    import test_training_curve_parity as parity

    case = parity.load_training_case(name, out_dir)
    trainer, module, ours = parity.train_nestkit(case, work_dir / "run", 0, STEPS, case.initial)
    export = parity.export_like_cli(trainer, work_dir)
    weights = torch.load(export, weights_only=True)
    _, theirs = train_nemo(cfg, weights, nemo_batches(pool, plan, STEPS, CONTINUED_STEPS), spec["seed"], STEPS)
    _, _, ours_on = parity.train_nestkit(case, work_dir / "continued", STEPS, CONTINUED_STEPS, export)
    gaps = curve_gaps(parity, case, ours, module.model.state_dict())
    gaps["export_loss_rel"] = float(parity.relative_gap(ours_on.loss, theirs.loss).max())
    gaps["final_model_loss_rel"] = float(parity.relative_gap(ours_on.loss, case.arrays["nemo_continued_loss"]).max())
    return {
        "export_nemo_loss": np.array(theirs.loss),
        "export_nestkit_loss": np.array(ours_on.loss),
        "nestkit_vs_nemo": gaps,
        "nemo_1_vs_2_threads": nemo_thread_floor(parity, case, cfg, spec, pool, plan),
    }


# -- files -------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import lightning
    import nemo

    return {
        "nemo": nemo.__version__,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def write_case(name: str, spec: dict, pool: dict, out_dir: Path) -> None:
    from omegaconf import OmegaConf

    cfg = case_config(spec, STEPS)
    plan = make_plan(spec["plan_seed"], STEPS + CONTINUED_STEPS, len(pool["audio_len"]))
    start = initial_state(cfg, spec["init_seed"])
    model, nemo = train_nemo(cfg, start, nemo_batches(pool, plan, 0, STEPS), spec["seed"], 0)
    final = changed_entries(start, model.state_dict())
    # NeMo trained on from its own final weights, as from nestkit's export below (fresh optimiser)
    _, continued = train_nemo(
        cfg, model.state_dict(), nemo_batches(pool, plan, STEPS, CONTINUED_STEPS), spec["seed"], STEPS
    )

    (out_dir / f"{name}.config.yaml").write_text(OmegaConf.to_yaml(cfg))
    stored = {k: (v.half() if v.dtype == torch.float32 else v) for k, v in start.items()}
    for key, value in start.items():
        assert torch.equal(stored[key].to(value.dtype), value), f"{key} not float16-representable"
    torch.save(stored, out_dir / f"{name}.initial.pt")
    torch.save(final, out_dir / f"{name}.final.pt")
    meta = {
        "case": name,
        "settings": spec["settings"],
        "lr": spec["lr"],
        "warmup_steps": WARMUP_STEPS,
        "seed": spec["seed"],
        "init_seed": spec["init_seed"],
        "plan_seed": spec["plan_seed"],
        "pool_audio_seed": POOL_AUDIO_SEED,
        "steps": STEPS,
        "continued_steps": CONTINUED_STEPS,
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
    }
    arrays = {
        "plan": plan,
        "loss": np.array(nemo.loss),
        "lr": np.array(nemo.lr),
        "grad_norm": np.array(nemo.grad_norm),
        "nemo_continued_loss": np.array(continued.loss),
    }
    np.savez_compressed(out_dir / f"{name}.npz", **arrays, meta_json=np.array(json.dumps(meta)))

    with tempfile.TemporaryDirectory() as work_dir:
        measured = nestkit_then_nemo(name, cfg, spec, pool, plan, out_dir, Path(work_dir))
    arrays.update(export_nemo_loss=measured["export_nemo_loss"], export_nestkit_loss=measured["export_nestkit_loss"])
    meta["nestkit_vs_nemo"], meta["nemo_1_vs_2_threads"] = measured["nestkit_vs_nemo"], measured["nemo_1_vs_2_threads"]
    np.savez_compressed(out_dir / f"{name}.npz", **arrays, meta_json=np.array(json.dumps(meta)))
    size = sum((out_dir / f"{name}{s}").stat().st_size for s in (".npz", ".initial.pt", ".final.pt", ".config.yaml"))
    print(
        f"{name}: {size / 1e6:.2f} MB; losses {nemo.loss[0]:.4f} -> {nemo.loss[-1]:.4f}; "
        f"peak lr {max(nemo.lr):.3g} at step {int(np.argmax(nemo.lr))}"
    )
    for key in ("nestkit_vs_nemo", "nemo_1_vs_2_threads"):
        print(f"{name}: {key} {json.dumps(meta[key])}")
    print(
        f"{name}: next steps from nestkit's export: NeMo {measured['export_nemo_loss'].tolist()}, "
        f"nestkit {measured['export_nestkit_loss'].tolist()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--only", nargs="*", default=None, help="case names (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(TORCH_THREADS)
    args.out.mkdir(parents=True, exist_ok=True)
    pool = make_pool()
    np.savez_compressed(
        args.out / "audio_pool.npz",
        **pool,
        meta_json=np.array(
            json.dumps(
                {
                    "seconds": POOL_SECONDS,
                    "audio_seed": POOL_AUDIO_SEED,
                    "made_by": "tools/make_nemo_reference.py synth_batch",
                }
            )
        ),
    )
    for name, spec in CASES.items():
        if args.only is None or name in args.only:
            write_case(name, spec, pool, args.out)


if __name__ == "__main__":
    main()
