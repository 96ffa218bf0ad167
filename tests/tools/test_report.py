"""`nestkit report` on a real 2-rank run with a planted straggler and a planted stall, opened in a
real headless browser.

The run: 2 ranks (gloo DDP, real `nestkit train` processes) whose rank 1 reads every file 0.3 s
slower (NESTKIT_DEBUG_SLOW_READ_S=1:0.3), two unreadable files in the manifest (quarantined), and
one file whose read never returns (NESTKIT_DEBUG_BLOCK_PATH) late in epoch 0: the watchdog reports
a data stall and ends the job. It is then resumed on one rank (a resume and a world-size change),
and reported on while it runs (a live run) and after it ends.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nestkit.config import load_config
from nestkit.data.pipeline import build_pipeline
from nestkit.monitor.watchdog import STALL_EXIT_CODE
from tests.helpers import write_train_config
from tests.tools.browser import chromium, console_errors, screenshot_spread

WORLD = 2
SLOW_S = 0.3
MAX_STEPS = 14
FIGURES = {"training", "step_time", "timeline", "quarantine", "epochs", "incident-stall-1"}


def _nestkit(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nestkit.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def _manifest_with_bad_files(tmp: Path, corpus: dict) -> str:
    base = Path(corpus["train"]).parent
    lines = []
    for line in Path(corpus["train"]).read_text().splitlines():
        item = json.loads(line)
        item["audio_filepath"] = str(base / item["audio_filepath"])
        lines.append(json.dumps(item))
    for name in ("garbage-a.wav", "garbage-b.wav"):
        (tmp / name).write_bytes(b"not audio at all, " * 400)
        lines.insert(len(lines) // 2, json.dumps({"audio_filepath": str(tmp / name), "duration": 1.5}))
    path = tmp / "train.json"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("planted")
    cfg_path = write_train_config(
        tmp / "planted.yaml",
        _manifest_with_bad_files(tmp, corpus),
        corpus["noise"],
        corpus["validation"],
        name="planted",
        model={"train_ds": {"num_workers": 0, "sample_timeout_s": 0}},  # a blocked read is a stall
        trainer={"devices": WORLD, "strategy": "ddp", "max_steps": MAX_STEPS, "val_check_interval": 4},
        exp_manager={"checkpoint_callback_params": {"every_n_train_steps": 3}},
        nestkit={
            "dataloader_timeout_s": 0,
            "watchdog": {"stall_timeout_s": 8, "first_step_timeout_s": 120, "dump_grace_s": 10},
            # a short run on a busy CPU: judged early, and only by a clear margin (compute times are noisy here)
            "straggler": {"check_interval_s": 1.0, "checks": 2, "min_steps": 3, "factor": 2.0},
        },
    )
    cfg = load_config(cfg_path).config
    sampler = build_pipeline(cfg, "train", 1, WORLD).sampler
    last = sampler.plan(0).num_batches - 1  # rank 1's last batch of epoch 0: every file is read once before
    blocked = next(c for c in sampler.batch_cuts(last, 0) if "garbage" not in c.recording.sources[0].source)
    blocked_path = blocked.recording.sources[0].source
    env = {"NESTKIT_DEBUG_SLOW_READ_S": f"1:{SLOW_S}", "NESTKIT_DEBUG_BLOCK_PATH": blocked_path}
    first = _nestkit("train", cfg_path, cwd=tmp, env=env, timeout=400)
    run = cfg.run_dir.resolve()

    # resumed on one rank; reported on while it trains
    second = subprocess.Popen(
        # the report drawn meanwhile competes for the CPU: the short stall bound was for the planted block only
        [
            sys.executable,
            "-m",
            "nestkit.cli",
            "train",
            cfg_path,
            "--resume",
            "trainer.devices=1",
            "nestkit.watchdog.stall_timeout_s=120",
        ],
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group: paused whole (ranks, workers, node monitor) below
    )
    live = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and second.poll() is None:
        segments = [
            json.loads(line) for line in (run / "segments.jsonl").read_text().splitlines() if line.endswith("}")
        ]
        log = (run / "batches" / "rank0.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in log if line.endswith("}")]
        # as soon as the resumed run has trained a step: the steps left are the report's time to read it live
        if len(segments) >= 2 and any(r["time"] >= segments[1]["time"] for r in records):
            # paused while the report reads it (a busy machine could otherwise finish the last steps first);
            # its heartbeats still say running, as a live run's do
            os.killpg(second.pid, signal.SIGSTOP)
            try:
                live = _nestkit("report", str(run), "-o", str(tmp / "live.html"), "--incident-batches", "0", cwd=tmp)
            finally:
                os.killpg(second.pid, signal.SIGCONT)
            break
        time.sleep(0.5)
    output, _ = second.communicate(timeout=400)
    final = _nestkit("report", str(run), "--png", str(tmp / "png"), cwd=tmp)
    return {
        "tmp": tmp,
        "run": run,
        "first": first,
        "second": (second.returncode, output),
        "live": live,
        "final": final,
        "blocked": blocked_path,
        "html": run / "report.html",
    }


def _records(run: Path, rank: int) -> list[dict]:
    kept = {}
    for line in (run / "batches" / f"rank{rank}.jsonl").read_text().splitlines():
        record = json.loads(line)
        kept[(record["step"], record["epoch"], record["batch"])] = record
    return sorted(kept.values(), key=lambda r: r["step"])


def _segments(run: Path) -> list[int]:
    return sorted({json.loads(line)["start_step"] for line in (run / "segments.jsonl").read_text().splitlines()})


def _timed(run: Path, rank: int, segment: int) -> list[dict]:
    """The rank's records in that segment of the run, less the segment's first (start-up)."""
    starts = _segments(run) + [10**9]
    mine = [r for r in _records(run, rank) if starts[segment] <= r["step"] < starts[segment + 1]]
    return mine[1:]


def _page_values(html: str) -> dict[str, tuple[str, str]]:
    """data-key -> (exact value, text shown)."""
    return {
        key: (value, shown)
        for value, key, shown in re.findall(r'<span data-value="([^"]*)" data-key="([^"]*)">([^<]*)</span>', html)
    }


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_run_had_its_straggler_stall_resume_and_bad_files(planted):
    first, run = planted["first"], planted["run"]
    assert first.returncode in (STALL_EXIT_CODE, -9), first.stdout[-2000:] + first.stderr[-3000:]
    assert "nestkit straggler: rank 1 waits" in first.stderr, first.stderr[-3000:]
    warnings = [json.loads(line) for line in (run / "stragglers.jsonl").read_text().splitlines()]
    data_warnings = [w for w in warnings if w["phase"] == "data"]
    assert [w["rank"] for w in data_warnings] == [1], warnings
    assert all(load["ms"] >= SLOW_S * 1e3 for load in data_warnings[0]["slow_loads"])
    assert "data stall: rank 1" in first.stderr and planted["blocked"] in first.stderr
    code, output = planted["second"]
    assert code == 0, output[-3000:]
    # honest throughput: rank 1's data wait per step is at least its two slowed reads
    assert len(_segments(run)) == 2
    assert statistics.median(r["data_wait_s"] for r in _timed(run, 1, 0)) >= 2 * SLOW_S
    assert statistics.median(r["data_wait_s"] for r in _timed(run, 0, 0)) < SLOW_S
    assert all(len(r["load_ms"]) == len(r["cut_ids"]) for r in _records(run, 1))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_report_of_a_live_run_shows_what_is_there(planted):
    live = planted["live"]
    assert live is not None, "the resumed run ended before it could be reported on while running"
    assert live.returncode == 0, live.stdout[-2000:] + live.stderr[-3000:]
    html = (planted["tmp"] / "live.html").read_text()
    assert "live: rank(s) 0 running" in html
    assert 'id="fig-training"' in html and 'id="fig-step_time"' in html


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_report_names_the_straggler_and_its_slow_files(planted):
    final, run = planted["final"], planted["run"]
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-3000:]
    said = [line for line in final.stdout.splitlines() if line.startswith("straggler:") and " waits " in line]
    assert len(said) == 1 and "(2 ranks): rank 1 waits" in said[0], final.stdout
    html = planted["html"].read_text()
    callout = re.search(r"<b>Straggler:</b> steps \d+-\d+ \(2 ranks\): (rank 1 waits [^<]*)", html)
    assert callout, "no straggler callout"
    named = re.findall(r"(/\S+\.wav) \((\d+) ms", callout.group(1))
    assert len(named) == 3, callout.group(1)
    rank1_cuts = {cut for r in _records(run, 1) for cut in r["cut_ids"]}
    for path, ms in named:  # rank 1's own files, each slowed
        assert any(cut.startswith(Path(path).stem + "-L") for cut in rank1_cuts), path
        assert int(ms) >= SLOW_S * 1e3
    assert "rank 0 waits" not in html


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_page_numbers_are_the_logs_numbers(planted):
    run = planted["run"]
    values = _page_values(planted["html"].read_text())

    def shown(key: str, expected: float | int):
        value, text = values[key]
        assert float(value) == pytest.approx(expected, rel=1e-12, abs=1e-12), key
        assert text == (str(expected) if isinstance(expected, int) else f"{expected:.4g}"), key

    # metrics.csv: the resumed run's file holds the last steps
    versions = sorted((run / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:]))
    import csv

    rows = [r for r in csv.DictReader(versions[-1].open()) if r["train_loss"]]
    last = max(rows, key=lambda r: int(r["step"]))
    shown("last.train_loss", float(last["train_loss"]))
    shown("last.train_loss.step", int(last["step"]))
    steps = max(r["step"] for rank in (0, 1) for r in _records(run, rank))
    shown("steps", steps + 1)
    for segment, rank in ((0, 0), (0, 1), (1, 0)):  # 2 ranks, then rank 0 alone after the resume
        timed, key = _timed(run, rank, segment), f"seg{segment}.rank{rank}"
        shown(f"{key}.steps", len(timed))
        for part in ("data_wait_s", "compute_s", "peer_wait_s"):
            shown(f"{key}.{part}", sorted(r[part] for r in timed)[len(timed) // 2])
        wall = sum(r["data_wait_s"] + r["compute_s"] + r["peer_wait_s"] for r in timed)
        share = sum(r["data_wait_s"] for r in timed) / wall
        value, text = values[f"{key}.data_wait_share"]
        assert float(value) == pytest.approx(share) and text == f"{share * 100:.1f}%"
    assert "seg1.rank1.steps" not in values
    quarantined = sum(
        len(p.read_text().splitlines()) for p in (run / "quarantine").glob("rank*.jsonl") if p.read_text().strip()
    )
    assert quarantined >= 1
    shown("quarantine", quarantined)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_page_shows_the_incidents_and_is_self_contained(planted):
    html = planted["html"].read_text()
    assert "incident 1: data stall: rank 1" in html and planted["blocked"] in html
    assert "resumed at step" in html and "2 -&gt; 1 rank(s)" in html
    assert "garbage-a.wav" in html or "garbage-b.wav" in html
    for forbidden in ("http://", "https://", "<script", '<link rel="stylesheet', 'src="file:', "url("):
        assert forbidden not in html, forbidden
    sources = re.findall(r'<img [^>]*src="([^"]{0,40})', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    # --png: the same figures as the page
    ids = set(re.findall(r'<figure id="fig-([^"]+)"', html))
    assert ids >= FIGURES, ids
    pngs = {p.stem: p.read_bytes() for p in (planted["tmp"] / "png").glob("*.png")}
    assert set(pngs) == ids
    for name, blob in pngs.items():
        embedded = re.search(
            rf'<figure id="fig-{re.escape(name)}" class="figure"><img [^>]*src="data:image/png;base64,([^"]+)"', html
        )
        assert base64.b64decode(embedded.group(1)) == blob, name


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_browser_opens_it_from_disk_without_errors_and_every_figure_shows(planted):
    from selenium.webdriver.common.by import By

    with chromium() as driver:
        driver.get(planted["html"].as_uri())
        assert driver.title.startswith("nestkit report")
        figures = driver.find_elements(By.CSS_SELECTOR, "figure.figure")
        assert {f.get_attribute("id")[4:] for f in figures} >= FIGURES
        for fig in figures:
            image = fig.find_element(By.TAG_NAME, "img")
            loaded = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)
            assert loaded and loaded > 300, fig.get_attribute("id")
            spread, width, height = screenshot_spread(image)
            assert width > 300 and height > 100 and spread > 10, (fig.get_attribute("id"), spread, width, height)
        requests = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert [r for r in requests if not r.startswith("data:")] == []
        assert console_errors(driver) == []
        text = driver.find_element(By.TAG_NAME, "body").text
        assert "Straggler: steps" in text and "(2 ranks): rank 1 waits" in text


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_report_needs_only_the_run_folder_and_matplotlib(planted, tmp_path):
    """The light install plus nestkit[report]: no torch, lhotse or Lightning (shadowed here)."""
    shadow = tmp_path / "shadow"
    for name in ("torch", "lhotse", "pytorch_lightning"):
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(
            f'raise ModuleNotFoundError("No module named {name}", name="{name}")\n'
        )
    path = os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", ""), str(Path(__file__).parents[2])])
    out = tmp_path / "light.html"
    result = _nestkit("report", str(planted["run"]), "-o", str(out), cwd=tmp_path, env={"PYTHONPATH": path})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "pip install 'nestkit[train]'" in result.stderr
    html = out.read_text()
    assert 'id="fig-training"' in html and 'id="fig-step_time"' in html and 'id="fig-timeline"' in html
    assert "(2 ranks): rank 1 waits" in html and "incident-stall" not in html
