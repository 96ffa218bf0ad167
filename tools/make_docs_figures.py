"""Regenerate the pictures of README.md and docs/report.md from real runs, so that they stay true.

    python tools/make_docs_figures.py [--out docs/images] [--skip-demo] [--skip-planted]

1. The demo run (`make demo`: runs/nest-demo; trained first when it is missing): the figures of
   its report, and one replayed batch seen (log-mel, the step's masks, the mixed segments).
2. A planted run on the demo data: 2 DDP ranks on CPU, rank 1's reads slowed by 0.3 s
   (NESTKIT_DEBUG_SLOW_READ_S=1:0.3), two unreadable files in the manifest, one file whose read
   never returns late in epoch 0 (a stall), then resumed on one rank. The figures of its report,
   a screenshot of the page when Debian's chromium is installed, and what the commands printed
   (docs/images/planted-output.txt, pasted into docs/report.md).

Needs nestkit[report]. Takes a few minutes on a laptop's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "manifests" / "demo" / "config.yaml"
SLOW_READ = "1:0.3"
PLANTED_STEPS = 30


def nestkit(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the CLI of this checkout; its output is echoed and returned."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "COLUMNS": "160", **(env or {})}
    print("$ nestkit " + " ".join(args), flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "nestkit.cli", *args], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    print(result.stdout[-4000:] + result.stderr[-4000:], flush=True)
    if check and result.returncode != 0:
        raise SystemExit(f"nestkit {args[0]} failed with exit status {result.returncode}")
    return result


def demo_figures(out: Path, work: Path) -> None:
    run = ROOT / "runs" / "nest-demo"
    if not (run / "batches").is_dir():
        subprocess.run([sys.executable, str(ROOT / "manifests" / "make_demo_audio.py")], check=True, cwd=ROOT)
        nestkit("train", str(DEMO_CONFIG), "--resume", "--fresh")  # as make demo: resume, or start
    nestkit("report", str(run), "-o", str(work / "demo.html"), "--png", str(work / "demo"))
    for name in ("training", "step_time", "epochs"):
        shutil.copy(work / "demo" / f"{name}.png", out / f"demo-{name}.png")
    nestkit("replay-batch", "--step", "71", str(DEMO_CONFIG), "--audio", str(work / "batch"))
    picture = next((work / "batch").glob("*batch.png"))
    shutil.copy(picture, out / "demo-batch.png")


def planted_config(work: Path) -> tuple[Path, list[str]]:
    """The demo data with two unreadable files, and the overrides of a 2-rank run that stalls."""
    data = work / "planted-data"
    data.mkdir(parents=True, exist_ok=True)
    demo = DEMO_CONFIG.parent
    lines = []
    for line in (demo / "train.json").read_text().splitlines():
        item = json.loads(line)
        item["audio_filepath"] = str(demo / item["audio_filepath"])
        lines.append(json.dumps(item))
    for i, name in enumerate(("broken-a.wav", "broken-b.wav")):
        (data / name).write_bytes(b"this is not audio " * 500)
        lines.insert(20 + 30 * i, json.dumps({"audio_filepath": str(data / name), "duration": 2.0}))
    (data / "train.json").write_text("\n".join(lines) + "\n")
    overrides = [
        f"model.train_ds.manifest_filepath={data / 'train.json'}",
        "model.train_ds.batch_size=2",  # 21 steps per epoch on 2 ranks: the stall comes late in epoch 0
        "model.train_ds.num_workers=0",
        "model.train_ds.sample_timeout_s=0",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"trainer.max_steps={PLANTED_STEPS}",
        "trainer.val_check_interval=10",
        "trainer.log_every_n_steps=1",
        "exp_manager.checkpoint_callback_params.every_n_train_steps=5",
        f"exp_manager.exp_dir={work / 'runs'}",
        "exp_manager.name=planted",
        "nestkit.dataloader_timeout_s=0",
        "nestkit.watchdog.stall_timeout_s=15",
        "nestkit.straggler.check_interval_s=2",  # otherwise the defaults: 3 checks in a row, after 10 steps
    ]
    return data, overrides


def blocked_file(overrides: list[str]) -> str:
    """The first readable file of rank 1's last batch in epoch 0 (every other file is read before it)."""
    from nestkit.config import load_config
    from nestkit.data.pipeline import build_pipeline

    cfg = load_config(DEMO_CONFIG, overrides).config
    sampler = build_pipeline(cfg, "train", 1, 2).sampler
    cuts = sampler.batch_cuts(sampler.plan(0).num_batches - 1, 0)
    return next(c.recording.sources[0].source for c in cuts if "broken" not in c.recording.sources[0].source)


def planted_figures(out: Path, work: Path) -> None:
    _, overrides = planted_config(work)
    run = work / "runs" / "planted"
    shutil.rmtree(run, ignore_errors=True)
    blocked = blocked_file(overrides)
    env = {"NESTKIT_DEBUG_SLOW_READ_S": SLOW_READ, "NESTKIT_DEBUG_BLOCK_PATH": blocked}
    first = nestkit("train", str(DEMO_CONFIG), *overrides, env=env, check=False)
    second = nestkit("train", str(DEMO_CONFIG), "--resume", *overrides, "trainer.devices=1")
    report = nestkit("report", str(run), "--png", str(work / "planted"))
    shutil.copy(run / "report.html", work / "planted.html")
    for name in ("training", "step_time", "timeline", "quarantine"):
        shutil.copy(work / "planted" / f"{name}.png", out / f"planted-{name}.png")
    incident = next((work / "planted").glob("incident-stall-*.png"), None)
    if incident is not None:
        shutil.copy(incident, out / "planted-incident.png")
    screenshot(run / "report.html", out / "planted-page.png")
    said = [line for line in first.stderr.splitlines() if line.startswith("nestkit straggler:")]
    verdict = [line for line in first.stderr.splitlines() if "watchdog: data stall" in line]
    text = [
        f"$ NESTKIT_DEBUG_SLOW_READ_S={SLOW_READ} nestkit train ... (2 ranks; exit status {first.returncode})",
        *said,
        *verdict,
        f"$ nestkit train ... --resume trainer.devices=1 (exit status {second.returncode})",
        f"$ nestkit report {run.name}",
        report.stdout.strip(),
    ]
    (out / "planted-output.txt").write_text("\n".join(text).replace(str(work), "WORK").replace(str(ROOT), ".") + "\n")


def screenshot(page: Path, target: Path) -> None:
    """The top of the report page as a browser shows it (Debian's chromium, headless), if installed."""
    chromium = shutil.which("chromium")
    if chromium is None:
        print("chromium not installed: no screenshot of the page (apt-get install chromium)")
        return
    profile = target.parent / ".chromium-profile"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--hide-scrollbars",
            "--window-size=1300,1500",
            f"--screenshot={target}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    shutil.rmtree(profile, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "docs-figures", help="runs and scratch files")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-planted", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    if not args.skip_demo:
        demo_figures(args.out, args.work)
    if not args.skip_planted:
        planted_figures(args.out, args.work)
    print(f"figures in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
