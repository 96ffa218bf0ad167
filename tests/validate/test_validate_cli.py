"""`nestkit validate-manifest` through the real CLI: categories, exit codes, formats, repairs."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nestkit.data.synthetic import make_corpus
from nestkit.validate.categories import CATEGORIES, ERROR
from tests.validate.validate_corpus import (
    build_zoo,
    found,
    lhotse_manifest,
    nemo,
    run_cli,
    run_json,
    speech,
    truncated_copy,
    without_capabilities_prefix,
    write_jsonl,
)

# Categories proven by tests in test_validate_pool.py (they need a fault injected into a worker).
FAULT_CATEGORIES = {"timeout", "worker_crash", "internal_error"}


def _permissions_prefix() -> tuple[bool, list[str] | None]:
    """Whether a chmod 000 file is unreadable for the CLI we start, and the prefix that makes it so."""
    if os.geteuid() != 0:
        return True, None
    prefix = without_capabilities_prefix()
    return prefix is not None, prefix


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    corpus = build_zoo(folder)
    enforced, prefix = _permissions_prefix()
    args = [*corpus["manifests"]]
    for noise in corpus["noise"]:
        args += ["--noise", noise]
    done, report = run_json(*args, "--max-duration", "3.1", prefix=prefix)
    return corpus, done, report, enforced


@pytest.mark.timeout(120)
def test_zoo_reports_every_category_on_its_line(zoo):
    corpus, done, report, enforced = zoo
    assert done.returncode == 1, done.stderr
    got = found(report)
    expected = dict(corpus["expect"])
    if not enforced:  # root without a way to drop CAP_DAC_OVERRIDE: chmod 000 does not stop reads
        expected.pop(corpus["unreadable"])
    missed = {where: cat for where, cat in expected.items() if cat not in got.get(where, set())}
    assert not missed, f"expected categories not reported: {missed}"
    for where in corpus["valid"]:
        assert where not in got, f"a valid line got findings: {where}: {got[where]}"
    corrupt = [f for f in report["findings"] if f["category"] == "manifest_corrupt"]
    assert len(corrupt) == 1 and corrupt[0]["manifest"] == corpus["corrupt"]


def test_every_category_is_exercised_by_a_test(zoo):
    corpus, *_ = zoo
    checked_elsewhere = FAULT_CATEGORIES | {"manifest_corrupt"}  # its line depends on gzip: checked by manifest
    checked_elsewhere |= {name for name, c in CATEGORIES.items() if c.stage == "shard"}  # test_validate_shards.py
    assert set(corpus["expect"].values()) | checked_elsewhere == set(CATEGORIES)


def test_json_findings_have_the_documented_shape(zoo):
    _corpus, _done, report, _ = zoo
    assert set(report) == {"summary", "findings"}
    summary = report["summary"]
    assert summary["errors"] == sum(f["severity"] == "error" for f in report["findings"])
    assert summary["warnings"] == sum(f["severity"] == "warning" for f in report["findings"])
    assert summary["exit_code"] == 1 and summary["decoded"] is True
    for f in report["findings"]:
        assert set(f) == {"manifest", "line", "path", "category", "severity", "reason"}
        assert f["category"] in CATEGORIES and f["severity"] == CATEGORIES[f["category"]].severity
        # `<thing>: <problem> (expected X, got Y). <hint>`
        assert re.match(r"^(audio|manifest) \S.*: .+\(expected .+\)\. \S", f["reason"]), f["reason"]


def test_fifo_is_refused_without_being_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.wav")
    manifest = write_jsonl(tmp_path / "m.json", [nemo("pipe.wav", 1.0), nemo(speech(tmp_path, "a.wav"), 2.0)])
    # A validator timeout far beyond the test's own: had the FIFO been opened, the test would fail
    # by its pytest timeout, not pass by the validator's.
    done, report = run_json(manifest, "--timeout", "600", timeout=60)
    assert done.returncode == 1
    [finding] = report["findings"]
    assert (finding["line"], finding["category"]) == (1, "not_regular_file")
    assert "FIFO" in finding["reason"]


def test_unreadable_file(tmp_path):
    enforced, prefix = _permissions_prefix()
    if not enforced:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE (no setpriv): chmod 000 does not block reads")
    locked = speech(tmp_path, "locked.wav")
    os.chmod(locked, 0)
    manifest = write_jsonl(tmp_path / "m.json", [nemo(locked, 2.0)])
    _done, report = run_json(manifest, prefix=prefix)
    assert [f["category"] for f in report["findings"]] == ["unreadable"]
    assert "mode 0000" in report["findings"][0]["reason"]


# ------------------------------------------------------------------------------------------------
# Exit codes


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), num_utterances=12, num_noises=3)


def test_valid_corpus_passes_with_zero_findings(corpus):
    done, report = run_json(corpus["train"], corpus["validation"], "--noise", corpus["noise"], "--strict")
    assert done.returncode == 0, done.stdout
    assert report["findings"] == []
    assert report["summary"]["files"] == 15 and report["summary"]["errors"] == 0


def test_exit_codes_and_strict(tmp_path, corpus):
    good = speech(tmp_path, "good.wav", 2.0)
    warn_only = write_jsonl(tmp_path / "warn.json", [nemo(good, 2.0), nemo(good, 2.0)])  # a duplicate
    assert run_cli(warn_only).returncode == 0
    assert run_cli(warn_only, "--strict").returncode == 1
    errors = write_jsonl(tmp_path / "err.json", [nemo("gone.wav", 2.0)])
    assert run_cli(errors).returncode == 1
    assert run_cli(corpus["train"], "--strict").returncode == 0


def test_exit_codes_through_a_new_process(tmp_path, corpus):
    """The same through `nestkit.cli:main` in a process of its own, as CI runs it."""
    errors = write_jsonl(tmp_path / "err.json", [nemo("gone.wav", 2.0)])
    assert run_cli(corpus["validation"], "--strict", process=True).returncode == 0
    failed = run_cli(errors, process=True)
    assert failed.returncode == 1 and "[missing]" in failed.stdout
    assert run_cli(str(tmp_path / "nope.json"), process=True).returncode == 2


@pytest.mark.parametrize("case", ["missing", "directory", "no_arguments", "bad_option", "bad_value"])
def test_usage_errors_exit_2(tmp_path, corpus, case):
    args = {
        "missing": [str(tmp_path / "nope.json")],
        "directory": [str(tmp_path)],
        "no_arguments": [],
        "bad_option": [corpus["train"], "--format", "xml"],
        "bad_value": [corpus["train"], "--jobs", "-1"],
    }[case]
    done = run_cli(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr


def test_unreadable_manifest_exit_2(tmp_path, corpus):
    enforced, prefix = _permissions_prefix()
    if not enforced:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE (no setpriv)")
    locked = tmp_path / "locked.json"
    locked.write_text(Path(corpus["train"]).read_text())
    os.chmod(locked, 0)
    done = run_cli(str(locked), prefix=prefix)
    assert done.returncode == 2 and "unreadable" in done.stderr


# ------------------------------------------------------------------------------------------------
# Formats


@pytest.fixture(scope="module")
def small_bad(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    good = speech(folder, "good.wav", 2.0)
    return write_jsonl(
        folder / "train.json",
        [
            nemo(good, 2.0),
            nemo("gone.wav", 2.0),
            nemo(good, 2.0),
            "{not json",
            nemo(good, 1.0, offset=0.5),
        ],
    )


def test_junit_output_parses(small_bad, tmp_path):
    out = tmp_path / "report.xml"
    done = run_cli(small_bad, "--format", "junit", "--output", str(out))
    assert done.returncode == 1
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites" and root.get("failures") == "2"
    [suite] = root.findall("testsuite")
    failures = {
        case.get("name").split(":")[0]: case.find("failure").get("type")
        for case in suite.findall("testcase")
        if case.find("failure") is not None
    }
    assert failures == {"line 2": "missing", "line 4": "malformed_json"}
    warning_case = [c for c in suite.findall("testcase") if c.get("name").startswith("line 3")][0]
    assert "[duplicate]" in warning_case.find("system-out").text
    assert "FAILED" in done.stderr  # the verdict still reaches the log


def test_junit_strict_makes_warnings_failures(small_bad, tmp_path):
    out = tmp_path / "report.xml"
    run_cli(small_bad, "--format", "junit", "--output", str(out), "--strict")
    assert ET.parse(out).getroot().get("failures") == "3"


def test_github_annotations(small_bad):
    done = run_cli(small_bad, "--format", "github", cwd=str(Path(small_bad).parent))
    lines = done.stdout.splitlines()
    annotations = [line for line in lines if line.startswith("::")]
    assert annotations[0].startswith("::error file=train.json,line=2,title=validate-manifest missing::audio ")
    assert any(
        a.startswith("::warning file=train.json,line=3,title=validate-manifest duplicate::") for a in annotations
    )
    assert any(a.startswith("::error file=train.json,line=4,") for a in annotations)
    pattern = re.compile(r"^::(error|warning) file=[^,:]+,line=\d+,title=validate-manifest [a-z_]+::\S")
    assert all(pattern.match(a) for a in annotations)
    assert "FAILED" in lines[-1]


def test_plain_table_in_pipes_and_no_progress_bar(small_bad):
    done = run_cli(small_bad)
    assert "train.json:2: error: [missing] audio " in done.stdout
    assert "\x1b[" not in done.stdout + done.stderr  # no colour codes, no progress bar in a pipe
    assert done.stdout.strip().splitlines()[-1].startswith("validate-manifest FAILED: 2 error(s), 1 warning(s)")


def test_no_decode_skips_sample_checks(tmp_path):
    zeros = tmp_path / "zeros.wav"
    import numpy as np
    import soundfile as sf

    sf.write(zeros, np.zeros(32000, np.float32), 16000)
    manifest = write_jsonl(tmp_path / "m.json", [nemo(str(zeros), 2.0)])
    assert [f["category"] for f in run_json(manifest)[1]["findings"]] == ["all_zero"]
    done, report = run_json(manifest, "--no-decode")
    assert done.returncode == 0 and report["findings"] == [] and report["summary"]["decoded"] is False


# ------------------------------------------------------------------------------------------------
# lhotse manifests


@pytest.mark.parametrize("name", ["cuts.jsonl", "cuts.jsonl.gz"])
def test_lhotse_manifests(tmp_path, name):
    path, expect = lhotse_manifest(tmp_path, name)
    done, report = run_json(path)
    assert done.returncode == 1
    got = found(report)
    assert (path, 1) not in got
    for where, category in expect.items():
        assert category in got.get(where, set()), (where, got.get(where))


# ------------------------------------------------------------------------------------------------
# Repairs


def test_write_clean_drops_error_lines_and_keeps_paths_valid(tmp_path):
    data = tmp_path / "data"
    good = speech(data, "good.wav", 2.0)
    other = speech(data, "other.wav", 2.5, seed=3)
    manifest = write_jsonl(
        data / "train.json",
        [
            nemo("good.wav", 2.0),
            nemo("gone.wav", 2.0),
            "",
            nemo("other.wav", 2.5, text="keep me"),
            nemo("good.wav", 2.0),
            nemo(good, -1),
        ],
    )
    out = tmp_path / "clean" / "train.json"
    done = run_cli(manifest, "--write-clean", str(out))
    assert done.returncode == 1
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w.get("text") for w in written] == [None, "keep me", None]  # the duplicate is a warning: kept
    assert os.path.normpath(os.path.join(out.parent, written[1]["audio_filepath"])) == other
    assert "3 line(s) kept, 2 with errors left out" in done.stderr
    again, report = run_json(str(out))
    assert again.returncode == 0 and {f["category"] for f in report["findings"]} == {"duplicate"}


def test_write_clean_with_several_manifests_writes_a_folder(tmp_path, corpus):
    out = tmp_path / "clean"
    done = run_cli(corpus["train"], "--noise", corpus["noise"], "--write-clean", str(out))
    assert done.returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["noise.json", "train.json"]
    assert run_cli(str(out / "train.json"), "--noise", str(out / "noise.json"), "--strict").returncode == 0


def test_write_clean_refuses_to_overwrite_its_input(corpus):
    done = run_cli(corpus["train"], "--write-clean", corpus["train"])
    assert done.returncode == 2 and "is the input manifest" in done.stderr


def test_fix_durations(tmp_path):
    three = speech(tmp_path, "three.wav", 3.0)
    half = truncated_copy(three, tmp_path / "half.wav")  # about 1.5 s left
    manifest = write_jsonl(
        tmp_path / "train.json",
        [
            nemo(three, 2.0),  # duration_mismatch: 3.0
            nemo(half, 3.0),  # truncated: about 1.5
            {"audio_filepath": "three.wav"},  # missing duration: 3.0
            '{"audio_filepath": "three.wav", "duration": NaN}',  # NaN: 3.0
            nemo(three, 2.5, offset=1.0),  # a segment that overshoots: shrinks to 2.0
            nemo(three, 1.0, offset=0.5),  # a segment that fits: unchanged
            nemo("gone.wav", 2.0),  # cannot be measured: kept as is
        ],
    )
    out = tmp_path / "fixed.json"
    done = run_cli(manifest, "--fix-durations", str(out))
    assert done.returncode == 1
    durations = [json.loads(line).get("duration") for line in out.read_text().splitlines()]
    assert durations[0] == 3.0 and durations[2] == 3.0 and durations[3] == 3.0
    assert 1.45 < durations[1] < 1.55
    assert durations[4:] == [2.0, 1.0, 2.0]
    assert "5 duration(s) measured and changed, 1 line(s) could not be measured" in done.stderr
    _again, report = run_json(str(out))
    assert {(f["line"], f["category"]) for f in report["findings"] if f["severity"] == ERROR} == {(7, "missing")}
    assert not [f for f in report["findings"] if f["category"] in ("duration_mismatch", "truncated")]


def test_cli_defaults_match_the_library():
    from nestkit.commands import validate_manifest as cli
    from nestkit.config import DatasetConfig
    from nestkit.data.audio import DURATION_TOLERANCE_S
    from nestkit.validate.audio import CheckSettings
    from nestkit.validate.validator import DEFAULT_SHARD_TIMEOUT_S, DEFAULT_TIMEOUT_S, ValidateOptions

    checks, options = CheckSettings(), ValidateOptions()
    assert (
        checks.target_rate,
        checks.duration_tolerance_s,
        checks.clip_level,
        checks.clip_fraction,
        checks.noise_silence_db,
    ) == (
        cli._TARGET_RATE,
        cli._TOLERANCE_S,
        cli._CLIP_LEVEL,
        cli._CLIP_FRACTION,
        cli._NOISE_SILENCE_DB,
    )
    assert checks.duration_tolerance_s == DURATION_TOLERANCE_S
    assert checks.noise_silence_db == DatasetConfig.noise_silence_db
    assert (options.min_duration_s, options.max_duration_s) == (cli._MIN_DURATION_S, cli._MAX_DURATION_S)
    assert (options.min_duration_s, options.max_duration_s) == (
        DatasetConfig.min_duration,
        DatasetConfig.max_duration,
    )
    assert cli._TIMEOUT_S == DEFAULT_TIMEOUT_S == options.timeout_s
    assert cli._SHARD_TIMEOUT_S == DEFAULT_SHARD_TIMEOUT_S == options.shard_timeout_s


def test_docs_document_every_category():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "validate-manifest.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (error|warning) \|", docs, flags=re.MULTILINE))
    assert rows == {name: c.severity for name, c in CATEGORIES.items()}


def test_repairs_of_a_damaged_gzip_manifest_keep_what_is_readable(tmp_path):
    import gzip

    good = speech(tmp_path, "good.wav", 2.0)
    lines = "".join(json.dumps(nemo(good, 1.0, offset=round(i * 0.001, 3))) + "\n" for i in range(300))
    whole = gzip.compress(lines.encode())
    damaged = tmp_path / "damaged.jsonl.gz"
    damaged.write_bytes(whole[: len(whole) // 2])
    done, report = run_json(str(damaged), "--write-clean", str(tmp_path / "clean.jsonl.gz"))
    assert done.returncode == 1
    [corrupt] = [f for f in report["findings"] if f["category"] == "manifest_corrupt"]
    with gzip.open(tmp_path / "clean.jsonl.gz", "rt") as f:
        kept = f.read().splitlines()
    assert 0 < len(kept) == corrupt["line"] - 1 < 300


def test_help_lists_the_format_choices():
    done = run_cli("--help", env={"COLUMNS": "200"})
    assert done.returncode == 0 and "[table|json|junit|github]" in done.stdout
    assert "_OP_0..3_CL_" in done.stdout  # NeMo's spelling survives the help's markup
