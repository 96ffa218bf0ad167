"""The spike detector, the per-utterance loss and the incident record, without a trainer: every
decision is a pure function of values that are the same on every rank."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nestkit.config.schema import AnomalyConfig
from nestkit.model.loss import masked_token_loss
from nestkit.training.incident import build_incident, verdict
from nestkit.training.spikes import (
    GRAD_NORM_SPIKE,
    LOSS_SPIKE,
    NONFINITE_GRAD,
    NONFINITE_LOSS,
    UTTERANCE_LOSS,
    SpikeDetector,
    StepValues,
    TrailingWindow,
    cut_key,
)


def values(step, loss=2.0, grad=1.0, deviation=0.3, nonfinite=(), scores=(0.0,), repeat=(), suspects=()):
    return StepValues(step, loss, 100, grad, deviation, list(nonfinite), list(scores), list(repeat), list(suspects))


def healthy(detector: SpikeDetector, steps: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for step in range(steps):
        v = values(step, 2.0 + 0.05 * rng.standard_normal(), 1.0 + 0.05 * rng.standard_normal())
        assert detector.judge(v) == []
        detector.update(v)


def test_window_median_and_robust_spread_with_a_floor():
    window = TrailingWindow(5)
    for value in (1.0, 2.0, 3.0, 100.0, float("nan"), 2.0, 2.0):
        window.add(value)
    assert list(window.values) == [2.0, 3.0, 100.0, 2.0, 2.0]  # the last 5 finite values
    assert window.median() == 2.0
    assert window.spread() == pytest.approx(0.1)  # MAD 0: the floor is 5% of the median
    flat = TrailingWindow(3, [0.0, 0.0, 0.0])
    assert flat.spread() == pytest.approx(1e-12)


def test_no_spike_is_judged_during_warm_up_but_nan_is_judged_from_the_first_step():
    detector = SpikeDetector(AnomalyConfig(warmup_steps=10))
    healthy(detector, 9)
    assert detector.judge(values(9, loss=50.0, grad=50.0)) == []  # 9 steps seen: still warming up
    (signal,) = detector.judge(values(9, loss=float("nan")))
    assert signal.kind == NONFINITE_LOSS
    (signal,) = SpikeDetector(AnomalyConfig()).judge(values(0, loss=1.0, grad=float("inf")))
    assert signal.kind == NONFINITE_GRAD and "non-finite gradient norm (inf)" in signal.text()


def test_a_loss_spike_and_a_gradient_spike_after_warm_up():
    detector = SpikeDetector(AnomalyConfig(warmup_steps=10))
    healthy(detector, 30)
    signals = detector.judge(values(30, loss=3.0, grad=1.05))
    assert [s.kind for s in signals] == [LOSS_SPIKE]
    spike = signals[0]
    assert spike.typical == pytest.approx(2.0, abs=0.05) and spike.z > 6
    assert spike.text().startswith(f"loss spike: 3 vs typical {spike.typical:.4g} (robust z {spike.z:.1f} > 6)")
    assert [s.kind for s in detector.judge(values(30, loss=2.0, grad=9.0))] == [GRAD_NORM_SPIKE]
    assert detector.judge(values(30, loss=2.1, grad=1.1)) == []  # ordinary noise
    assert detector.judge(values(30, loss=1.0, grad=0.1)) == []  # a drop is not an anomaly


def test_one_utterance_far_above_the_rest_is_named_with_its_rank():
    cfg = AnomalyConfig(warmup_steps=10, row_loss_threshold=6.0)
    detector = SpikeDetector(cfg)
    healthy(detector, 12)
    spread = detector.row_spread()
    assert spread == pytest.approx(math.sqrt(math.pi / 2) * 0.3)
    z = detector.row_score(2.0 + 7 * spread, frames=20)
    assert z == pytest.approx(7.0, rel=0.05)
    assert detector.row_score(9.0, frames=cfg.min_row_frames - 1) is None  # too few frames to judge alone
    (signal,) = detector.judge(values(12, scores=(1.0, z)))
    assert signal.kind == UTTERANCE_LOSS and signal.ranks == [1]
    assert signal.value == pytest.approx(2.0 + 7 * spread, rel=0.05)


def test_an_utterance_moderately_high_again_is_named_at_its_second_appearance():
    cfg = AnomalyConfig(warmup_steps=10)
    detector = SpikeDetector(cfg)
    healthy(detector, 12)
    key, other = cut_key("rec0417-L18"), cut_key("tone03-L4")
    assert key != other and 0 < key < 2**48
    first = values(12, scores=(4.2, 0.0), repeat=(0.0, 0.0), suspects=(key, 0))
    assert detector.judge(first) == []  # 4.2 < 6 at first sight: only remembered
    detector.update(first)
    assert detector.suspect_count(key) == 1 and detector.suspect_count(other) == 0
    (signal,) = detector.judge(values(13, scores=(0.0, 4.0), repeat=(0.0, 4.0), suspects=(0, key)))
    assert signal.kind == UTTERANCE_LOSS and signal.repeat and signal.ranks == [1] and signal.threshold == 3.5
    assert "utterance loss spike on rank(s) 1, again (it passed the repeat threshold" in signal.text()
    restored = SpikeDetector(cfg)
    restored.load_state_dict(detector.state_dict())
    assert restored.suspect_count(key) == 1


def test_restored_windows_decide_exactly_as_the_uninterrupted_detector():
    first, second = SpikeDetector(AnomalyConfig(warmup_steps=10)), SpikeDetector(AnomalyConfig(warmup_steps=10))
    healthy(first, 40, seed=3)
    second.load_state_dict(first.state_dict())
    for probe in (2.2, 2.5, 3.0, 5.0):
        assert [s.as_dict() for s in first.judge(values(40, loss=probe))] == [
            s.as_dict() for s in second.judge(values(40, loss=probe))
        ]


def test_per_utterance_loss_adds_up_to_the_batch_loss_which_keeps_its_value():
    torch.manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(3, 6, 10), dim=-1)
    tokens = torch.randint(0, 10, (3, 6))
    masks = torch.zeros(3, 4, 48)
    masks[0, :, :16] = 1  # two loss frames
    masks[2, :, 8:40] = 1  # four loss frames; row 1 has none
    result = masked_token_loss(masks, log_probs, tokens, None, 8, 0.8)
    assert result.row_frames.tolist() == [2, 0, 4]
    assert result.row_loss[1].item() == 0.0
    frames = result.row_frames.double()
    combined = float((result.row_loss.double() * frames).sum() / frames.sum())
    assert combined == pytest.approx(result.loss.item(), rel=1e-6)
    expected = -(log_probs[0, [0, 1]].gather(1, tokens[0, [0, 1], None])).mean()
    assert result.row_loss[0].item() == pytest.approx(expected.item(), rel=1e-6)
    assert not result.row_loss.requires_grad


def _row(rank, slot, cut, loss, frames, excess, **extra):
    return {
        "cut_id": cut,
        "manifest": "/data/train.json",
        "line": slot + 1,
        "path": f"/data/{cut}.wav",
        "augment": "noise",
        "energy_ratio_db": 3.5,
        "noise": {"cut_id": "hum-L2", "path": "/noise/hum.wav", "offset": 1.25, "fallback": None},
        "rank": rank,
        "epoch": 2,
        "batch": 7 + rank,
        "slot": slot,
        "loss": loss,
        "frames": frames,
        "excess": excess,
        "nonfinite": extra.get("nonfinite", False),
        "probe_origin": extra.get("probe_origin", False),
    }


def test_cuts_are_ranked_by_their_share_of_the_excess_over_every_rank():
    signal = SpikeDetector(AnomalyConfig()).judge(values(0, loss=float("nan")))  # any signal will do
    pooled = [
        {"rows": [_row(0, 0, "a", 3.0, 10, 10.0), _row(0, 1, "b", 2.0, 10, -1.0)], "positive": 10.0, "probe": None,
         "batches": [{"rank": 0}]},
        {"rows": [_row(1, 0, "c", 9.0, 10, 70.0)], "positive": 70.0, "probe": None, "batches": [{"rank": 1}]},
    ]  # fmt: skip
    incident = build_incident("step12", values(12, loss=4.0), signal, 2.0, pooled, 2, "skipped")
    assert [c["cut_id"] for c in incident["cuts"]] == ["c", "a", "b"]
    assert [c["share"] for c in incident["cuts"]] == [0.875, 0.125, 0.0]
    text = verdict(incident)
    assert "88% of the excess loss from cut c (/data/c.wav, /data/train.json:1; rank 1, epoch 2 batch 8" in text
    assert "noise hum-L2 @ 1.25 s, +3.5 dB" in text and text.endswith("skipped on every rank.")


def test_the_row_the_nan_probe_names_comes_first():
    pooled = [
        {
            "rows": [_row(0, 0, "loud", 9.0, 10, 70.0), _row(0, 1, "gap", float("nan"), 5, 0.0, nonfinite=True,
                                                             probe_origin=True)],
            "positive": 70.0,
            "probe": {"rank": 0, "epoch": 2, "batch": 7, "module": "preprocessor.featurizer", "where": "output",
                      "inputs_finite": True},
            "batches": [],
        }
    ]  # fmt: skip
    signals = SpikeDetector(AnomalyConfig()).judge(values(3, loss=float("nan"), nonfinite=[0]))
    incident = build_incident("step3", values(3, loss=float("nan")), signals, 2.0, pooled, 1, "stopped")
    assert incident["cuts"][0]["cut_id"] == "gap"
    text = verdict(incident)
    assert text.startswith("non-finite loss on rank(s) 0 at step 3; first non-finite output in module ")
    assert "preprocessor.featurizer (its inputs were finite)" in text and "in the row of cut gap" in text
