#!/usr/bin/env bash
# GPU readiness check: bf16-mixed training of NeMo's "Small" NEST on one GPU, its speed and memory,
# and the debugging tools still agreeing with the training log. One run, about 3-8 minutes:
#
#   bash bench/gpu_check.sh                    # on a machine with an NVIDIA GPU
#   DEVICE=cpu bash bench/gpu_check.sh         # dry run of every step on the CPU (bf16 autocast)
#
# 1. a Python with torch and nestkit: $PYTHON, else ./.venv or python3 if they have them (with
#    CUDA for DEVICE=gpu), else a new .venv-gpu: `pip install $TORCH` (PyPI's Linux wheel is the
#    CUDA build), then `pip install -e .`;
# 2. the demo corpus (manifests/make_demo_audio.py);
# 3. `nestkit train` (in process, to read the peak memory) of the Small model (d_model 176, 16
#    layers, 4 heads, 256 subsampling channels, 8192 classes) with trainer.precision=bf16-mixed,
#    $STEPS steps of $BATCH utterances, validation every 50 steps;
# 4. reports audio-seconds per second (per step: forward, backward and optimiser step; end to end:
#    wall time between the first and the last step, data loading included) and peak GPU memory;
# 5. checks: every loss finite, the loss falls, and `nestkit lookup` / `nestkit replay-batch`
#    rebuild logged batches with the fingerprints the training log holds;
# then prints PASS or FAIL per check and exits 0 only if every check passed.
# Everything lands in bench/out/gpu_check/ (summary.json, train.log, the run folder).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

DEVICE=${DEVICE:-gpu}
case "$DEVICE" in
gpu) STEPS=${STEPS:-150} BATCH=${BATCH:-16} WORKERS=${WORKERS:-8} TORCH=${TORCH:-torch} ;;
cpu) STEPS=${STEPS:-3} BATCH=${BATCH:-4} WORKERS=${WORKERS:-2} TORCH=${TORCH:-torch==2.13.0} ;;
*) echo "DEVICE=$DEVICE: unknown (expected gpu or cpu)" >&2 && exit 2 ;;
esac
OUT=bench/out/gpu_check
RUN_DIR=$OUT/runs/gpu-check
mkdir -p "$OUT"
results=()
failed=0
record() { # record NAME PASS|FAIL DETAIL
    results+=("$2  $1: $3")
    [ "$2" = PASS ] || failed=1
    echo "== $2 $1: $3"
}
finish() {
    echo
    echo "gpu_check summary (DEVICE=$DEVICE, $SECONDS s):"
    printf '  %s\n' "${results[@]}"
    if [ "$failed" = 0 ]; then echo "gpu_check: PASS"; else echo "gpu_check: FAIL"; fi
    exit "$failed"
}

# -- 1. Python with torch (and CUDA) and nestkit ----------------------------------------------
usable() { # usable PYTHON: imports torch and nestkit, and sees a GPU when DEVICE=gpu
    [ -x "$(command -v "$1")" ] || return 1
    "$1" - "$DEVICE" <<'EOF' >/dev/null 2>&1
import sys
import torch, nestkit  # noqa: F401
sys.exit(0 if sys.argv[1] == "cpu" or torch.cuda.is_available() else 1)
EOF
}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    for candidate in .venv/bin/python .venv-gpu/bin/python python3; do
        if usable "$candidate"; then PY=$candidate && break; fi
    done
fi
if [ -z "$PY" ]; then
    echo "== no Python with torch$([ "$DEVICE" = gpu ] && echo " (CUDA)") and nestkit: making .venv-gpu (pip install $TORCH; pip install -e .)"
    python3 -m venv .venv-gpu &&
        .venv-gpu/bin/pip install --quiet "$TORCH" &&
        .venv-gpu/bin/pip install --quiet -e . &&
        PY=.venv-gpu/bin/python
fi
if [ -z "$PY" ] || ! "$PY" -c "import torch, nestkit" 2>/dev/null; then
    record environment FAIL "no Python with torch and nestkit (set PYTHON=..., or check pip's output above)"
    finish
fi
device_line=$("$PY" - "$DEVICE" <<'EOF'
import sys, torch
if sys.argv[1] == "cpu":
    print(f"cpu (torch {torch.__version__}, {torch.get_num_threads()} threads)")
elif not torch.cuda.is_available():
    print(f"no CUDA device visible to torch {torch.__version__} (CUDA build: {torch.version.cuda})")
    sys.exit(1)
else:
    p = torch.cuda.get_device_properties(0)
    print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB (torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()})")
EOF
) && record environment PASS "$PY: $device_line" || { record environment FAIL "$device_line" && finish; }

# -- 2. data and config -----------------------------------------------------------------------
"$PY" manifests/make_demo_audio.py >/dev/null || { record data FAIL "manifests/make_demo_audio.py failed" && finish; }
rm -rf "$RUN_DIR" "$OUT/train.json" "$OUT/summary.json"  # an earlier run's results must not pass for this one's
CONFIG=$OUT/gpu_check.yaml
DEMO=$PWD/manifests/demo
accelerator=$([ "$DEVICE" = cpu ] && echo cpu || echo gpu)
cat >"$CONFIG" <<EOF
# written by bench/gpu_check.sh: NeMo's Small NEST (nest_fast-conformer.yaml's size table), bf16-mixed
name: gpu-check
model:
  num_classes: 8192
  train_ds: {manifest_filepath: $DEMO/train.json, noise_manifest: $DEMO/noise.json, batch_size: $BATCH,
             drop_last: true, num_workers: $WORKERS, min_duration: 1.0, max_duration: 20.0}
  validation_ds: {manifest_filepath: $DEMO/validation.json, noise_manifest: $DEMO/noise.json, batch_size: $BATCH,
                  num_workers: 0, shuffle: false}
  encoder: {d_model: 176, n_heads: 4, n_layers: 16, subsampling_conv_channels: 256}
  # a short warm-up to a 2e-3 peak (NoamAnnealing: lr x d_model^-0.5 x warmup^-0.5), so the loss moves in $STEPS steps
  optim: {lr: 0.133, sched: {warmup_steps: 25}}
trainer:
  devices: 1
  accelerator: $accelerator
  precision: bf16-mixed
  max_steps: $STEPS
  val_check_interval: 50
  log_every_n_steps: 5
  enable_progress_bar: false
exp_manager:
  exp_dir: $PWD/$OUT/runs
  checkpoint_callback_params: {every_n_train_steps: 1000000}
nestkit:
  seed: 0
EOF

# -- 3. training, in process (peak memory) ----------------------------------------------------
"$PY" - "$CONFIG" "$OUT/train.json" <<'EOF' 2>&1 | tee "$OUT/train.log"
import json, sys, time
import torch
from nestkit.config import load_config
from nestkit.training.run import train

cfg = load_config(sys.argv[1]).config
gpu = cfg.trainer.accelerator != "cpu"
started = time.time()
train(cfg)
summary = {"wall_s": round(time.time() - started, 1)}
if gpu:
    summary["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    summary["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
json.dump(summary, open(sys.argv[2], "w"))
EOF
if [ ! -f "$OUT/train.json" ]; then
    record training FAIL "nestkit train failed (see $OUT/train.log)"
    finish
fi

# -- 4. speed, memory and the loss, from the run folder ---------------------------------------
"$PY" - "$RUN_DIR" "$DEMO/train.json" "$OUT/train.json" "$OUT/summary.json" <<'EOF'
import json, math, re, statistics, sys
from nestkit.runfolder.batch_log import read_batch_log
from nestkit.runfolder.metrics import metrics_files, read_metrics

run_dir, manifest, train_json, out = sys.argv[1:5]
records = read_batch_log(run_dir, 0)
durations = [json.loads(line)["duration"] for line in open(manifest)]
seconds = [sum(durations[int(re.search(r"-L(\d+)$", c).group(1)) - 1] for c in r["cut_ids"]) for r in records]
losses = [r["loss"] for r in records]
metrics = read_metrics(metrics_files(run_dir))
per_step = metrics.get("audio_seconds_per_second", [])
warm = [v for s, v in per_step if s >= 10] or [v for _, v in per_step]
summary = json.load(open(train_json))
span = records[-1]["time"] - records[0]["time"] if len(records) > 1 else float("nan")
summary.update(
    steps=len(records),
    audio_seconds=round(sum(seconds), 1),
    step_audio_s_per_s_median=round(statistics.median(warm), 1) if warm else None,
    end_to_end_audio_s_per_s=round(sum(seconds[1:]) / span, 1) if span > 0 else None,
    loss_first=round(losses[0], 4),
    loss_last=round(losses[-1], 4),
    losses_finite=all(l is not None and math.isfinite(l) for l in losses),
)
for name in ("val_loss", "val_acc"):
    values = [v for _, v in metrics.get(name, [])]
    summary[name] = f"{values[0]:.4g} -> {values[-1]:.4g}" if values else "- (no validation in these steps)"
k = max(1, len(losses) // 5)
summary["loss_falls"] = statistics.mean(losses[-k:]) < statistics.mean(losses[:k])
json.dump(summary, open(out, "w"), indent=1)
print(json.dumps(summary))
EOF
summary=$OUT/summary.json
field() { "$PY" -c "import json,sys; print(json.load(open('$summary')).get('$1'))"; }
if [ ! -f "$summary" ]; then
    record training FAIL "no batch log or metrics in $RUN_DIR"
    finish
fi
record training "$([ "$(field steps)" = "$STEPS" ] && echo PASS || echo FAIL)" \
    "$(field steps)/$STEPS steps in $(field wall_s) s, $(field audio_seconds) s of audio"
record "finite loss" "$([ "$(field losses_finite)" = True ] && echo PASS || echo FAIL)" \
    "bf16-mixed loss $(field loss_first) -> $(field loss_last); val_loss $(field val_loss); val_acc $(field val_acc)"
if [ "$DEVICE" = gpu ]; then  # a 3-step dry run cannot show a trend
    record "loss falls" "$([ "$(field loss_falls)" = True ] && echo PASS || echo FAIL)" \
        "mean of the last fifth of the steps below the first fifth"
fi
echo "== speed: $(field step_audio_s_per_s_median) audio-s/s per step (median after step 10), $(field end_to_end_audio_s_per_s) audio-s/s end to end; peak memory: $(field peak_allocated_gib) GiB allocated, $(field peak_reserved_gib) GiB reserved"
results+=("INFO  speed: $(field step_audio_s_per_s_median) audio-s/s per step, $(field end_to_end_audio_s_per_s) end to end; peak GPU memory $(field peak_allocated_gib) GiB allocated / $(field peak_reserved_gib) GiB reserved")

# -- 5. lookup and replay-batch against the training log --------------------------------------
for step in 0 $((STEPS / 2)) $((STEPS - 1)); do
    looked=$("$PY" -m nestkit.cli lookup "$CONFIG" --step "$step" --format json 2>>"$OUT/tools.log" |
        "$PY" -c "import json,sys; r=json.load(sys.stdin)['ranks'][0]; print(r['fingerprint'], r['matches_log'])")
    replayed=$("$PY" -m nestkit.cli replay-batch --step "$step" "$CONFIG" --format json 2>>"$OUT/tools.log" |
        "$PY" -c "import json,sys; r=json.load(sys.stdin); print(r['fingerprint'], r['matches_log'])")
    ok=$([ "${looked#* }" = True ] && [ "${replayed#* }" = True ] && echo PASS || echo FAIL)
    record "fingerprints step $step" "$ok" "lookup ${looked:-error}, replay-batch ${replayed:-error} (fingerprint, matches the log)"
done
finish
