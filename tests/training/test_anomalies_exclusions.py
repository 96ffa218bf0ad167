"""nestkit.exclude_cuts: listed cuts get deterministic substitutes, recorded as "excluded", while the
plan, its signature and the batch positions stay what they were (so a run can resume exactly)."""

from __future__ import annotations

import dataclasses

import pytest

from nestkit.core.errors import NestkitError
from nestkit.data.exclusions import read_exclusions
from nestkit.data.pipeline import build_pipeline
from nestkit.runfolder.quarantine import read_quarantine
from tests.helpers import data_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from nestkit.data.synthetic import make_corpus

    return make_corpus(
        tmp_path_factory.mktemp("excl"), num_utterances=12, num_noises=2, min_seconds=1.0, max_seconds=1.5
    )


def excluding(corpus, path):
    cfg = data_config(corpus["train"], corpus["noise"], batch_size=3)
    return dataclasses.replace(cfg, nestkit=dataclasses.replace(cfg.nestkit, exclude_cuts=str(path) if path else None))


def test_the_list_takes_comments_and_blank_lines(tmp_path):
    listed = tmp_path / "excluded.txt"
    listed.write_text("# from nestkit anomalies\n\nutt0003-L2   # loss spike at step 41\n  utt0005-L4\nutt0003-L2\n")
    assert read_exclusions(listed) == {"utt0003-L2": 3, "utt0005-L4": 4}
    with pytest.raises(NestkitError, match=r"nestkit.exclude_cuts .*missing.txt: no such file \(expected a text file"):
        read_exclusions(tmp_path / "missing.txt")


def test_an_excluded_cut_is_substituted_and_recorded_while_the_plan_stays(tmp_path, corpus):
    plain = build_pipeline(excluding(corpus, None), "train")
    batch = plain.batch(1)
    victim = batch.cut_ids[1]
    listed = tmp_path / "excluded.txt"
    listed.write_text(f"{victim}  # the culprit\n")
    run = tmp_path / "run"
    pipeline = build_pipeline(excluding(corpus, listed), "train", run_dir=run)
    assert pipeline.planner.signature() == plain.planner.signature()  # `--resume` accepts the checkpoint
    again = pipeline.batch(1)
    assert again.position == batch.position and len(again) == len(batch)
    assert victim not in again.cut_ids
    assert again.cut_ids[0] == batch.cut_ids[0] and again.cut_ids[2] == batch.cut_ids[2]
    (record,) = again.failures
    assert record["kind"] == "excluded" and record["cut_id"] == victim and record["substitute"] == again.cut_ids[1]
    assert record["reason"].endswith(f"listed in nestkit.exclude_cuts ({listed})")
    assert again.records[1]["substitute_for"] == victim
    assert pipeline.batch(1).cut_ids == again.cut_ids  # the substitute is deterministic
    pipeline.dataset.quarantine.close()
    stored = [r for r in read_quarantine(run) if r["kind"] == "excluded"]  # the batch was built twice
    assert [(r["cut_id"], r["line"], r["substitute"]) for r in stored] == [
        (victim, record["line"], again.cut_ids[1])
    ] * 2
    # validation never excludes: only the training split reads the list
    assert build_pipeline(excluding(corpus, listed), "train").dataset.excluded == frozenset({victim})


def test_an_id_that_names_no_cut_is_an_error_naming_the_line(tmp_path, corpus):
    listed = tmp_path / "excluded.txt"
    listed.write_text("# typo below\nutt0003-L99\nnot-a-cut\n")
    with pytest.raises(NestkitError) as caught:
        build_pipeline(excluding(corpus, listed), "train")
    message = str(caught.value)
    assert "2 cut id(s) not in the training manifests" in message
    assert f"{listed}:2: cut utt0003-L99" in message and f"{listed}:3: cut not-a-cut" in message
