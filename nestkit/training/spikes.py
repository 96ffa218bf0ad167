"""The spike detector: each step's values judged against the median and MAD of the trailing window.

Pure arithmetic on values that are identical on every rank (nestkit.training.anomaly makes them so),
so every rank takes the same decision, and a resumed run that restores the windows takes the
decisions the uninterrupted run took. Three windows:

* the step loss (masked-token loss over every rank's and micro-batch's loss frames);
* the global gradient norm (after DDP's all-reduce, before clipping);
* the typical spread of one utterance's loss around the typical step loss (the mean absolute
  deviation of the step's utterances, over every rank), so that a single utterance far above the
  rest is seen even when, diluted in a large batch, it barely moves the step loss.

An utterance is an anomaly at first sight above `row_loss_threshold`; one that already passed the
lower `repeat_threshold` at an earlier appearance is one when it passes it again. Bad data is bad
every time it comes up, while a healthy utterance's loss is high only by chance (a loud noise, a few
loss frames), so the second rule finds moderate outliers with few false alarms. The detector keeps
those utterances as 48-bit keys of their cut ids, the same on every rank (they travel in the step's
all-reduce), and in the checkpoint.

Median and MAD are robust: a spike in the window does not hide the next one. A value is a spike
when its robust z-score, (value - median) / (1.4826 x MAD), passes the threshold; the spread is
never taken below 5% of the median, so that noise on a flat curve is not a spike. NaN/Inf is
always an anomaly, from the first step; spikes are judged once `warmup_steps` values were seen.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field

import numpy as np

from nestkit.config.schema import AnomalyConfig

MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation, for normal data
MEAN_ABS_DEV_TO_SIGMA = math.sqrt(math.pi / 2)  # mean absolute deviation -> standard deviation
# The spread never counts as less than 5% of the median: a MAD of 20 values is sometimes near 0 by
# chance, and a flat curve's noise is not a spike (at z 6 a spike is then at least a 30% rise)
MIN_RELATIVE_SPREAD = 0.05
MIN_SPREAD = 1e-12  # and never as 0 (a constant window)
MAX_SUSPECTS = 100_000  # utterances remembered for the repeat rule (the oldest are forgotten first)
KEY_BYTES = 6  # a cut id's key: 48 bits, exact in the float64 vector the ranks all-reduce

NONFINITE_LOSS = "nonfinite_loss"
NONFINITE_GRAD = "nonfinite_grad"
LOSS_SPIKE = "loss_spike"
GRAD_NORM_SPIKE = "grad_norm_spike"
UTTERANCE_LOSS = "utterance_loss"
KINDS = (NONFINITE_LOSS, NONFINITE_GRAD, LOSS_SPIKE, GRAD_NORM_SPIKE, UTTERANCE_LOSS)


class TrailingWindow:
    """The last `size` finite values of one signal."""

    def __init__(self, size: int, values: list[float] | None = None):
        self.values: deque[float] = deque(values or [], maxlen=size)

    def __len__(self) -> int:
        return len(self.values)

    def add(self, value: float | None) -> None:
        if value is not None and math.isfinite(value):
            self.values.append(float(value))

    def median(self) -> float | None:
        return float(np.median(self.values)) if self.values else None

    def spread(self) -> float | None:
        """Robust standard deviation: 1.4826 x MAD, floored (see the module doc)."""
        if not self.values:
            return None
        data = np.asarray(self.values)
        centre = float(np.median(data))
        mad = float(np.median(np.abs(data - centre)))
        return max(MAD_TO_SIGMA * mad, MIN_RELATIVE_SPREAD * abs(centre), MIN_SPREAD)


@dataclass
class StepValues:
    """One optimizer step as every rank sees it after the all-reduce."""

    step: int
    loss: float | None  # None: no loss frame on any rank (nothing was masked)
    loss_frames: int
    grad_norm: float | None  # None: no gradient at all
    row_deviation: float | None  # mean |utterance loss - typical loss| over the judged utterances
    nonfinite_ranks: list[int]  # ranks whose own loss (or an utterance's) was NaN/Inf
    row_scores: list[float]  # per rank: the robust z-score of its most deviant utterance (0: none judged)
    repeat_scores: list[float] = field(default_factory=list)  # per rank: the same among known suspects
    new_suspects: list[int] = field(
        default_factory=list
    )  # per rank: key of its worst utterance past repeat_threshold, or 0


@dataclass
class Signal:
    kind: str  # one of KINDS
    value: float | None = None
    typical: float | None = None
    spread: float | None = None
    z: float | None = None
    threshold: float | None = None
    ranks: list[int] = field(default_factory=list)
    repeat: bool = False  # an utterance that passed repeat_threshold at an earlier appearance too

    def as_dict(self) -> dict:
        return {k: (_round(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def text(self) -> str:
        if self.kind == NONFINITE_LOSS:
            where = f" on rank(s) {', '.join(map(str, self.ranks))}" if self.ranks else ""
            return f"non-finite loss{where}"
        if self.kind == NONFINITE_GRAD:
            return f"non-finite gradient norm ({self.value}) with a finite loss"
        name = {LOSS_SPIKE: "loss", GRAD_NORM_SPIKE: "gradient norm", UTTERANCE_LOSS: "utterance loss"}[self.kind]
        where = f" on rank(s) {', '.join(map(str, self.ranks))}" if self.kind == UTTERANCE_LOSS else ""
        if self.repeat:
            where += ", again (it passed the repeat threshold at an earlier appearance)"
        return (
            f"{name} spike{where}: {_fmt(self.value)} vs typical {_fmt(self.typical)} "
            f"(robust z {self.z:.1f} > {self.threshold:g})"
        )


class SpikeDetector:
    def __init__(self, cfg: AnomalyConfig):
        self.cfg = cfg
        self.loss = TrailingWindow(cfg.window)
        self.grad_norm = TrailingWindow(cfg.window)
        self.row_deviation = TrailingWindow(cfg.window)
        self.suspects: OrderedDict[int, int] = OrderedDict()  # cut key -> appearances past repeat_threshold

    # -- what is typical now (before this step is added) --------------------------------------

    def typical_loss(self) -> float | None:
        return self.loss.median()

    def row_spread(self) -> float | None:
        """The typical standard deviation of one utterance's loss around the typical loss."""
        deviation, typical = self.row_deviation.median(), self.typical_loss()
        if deviation is None or typical is None:
            return None
        return max(MEAN_ABS_DEV_TO_SIGMA * deviation, MIN_RELATIVE_SPREAD * abs(typical), MIN_SPREAD)

    def judgeable(self, loss: float, frames: int) -> bool:
        """Whether an utterance is judged alone (enough loss frames, a finite loss)."""
        return frames >= max(1, self.cfg.min_row_frames) and math.isfinite(loss)

    def row_scorer(self):
        """score(loss, frames): an utterance's robust z-score, or None when it is not judged alone or
        nothing is typical yet (the medians are taken once, for all of a step's utterances)."""
        typical, spread = self.typical_loss(), self.row_spread()

        def score(loss: float, frames: int) -> float | None:
            if typical is None or spread is None or not self.judgeable(loss, frames):
                return None
            return (loss - typical) / spread

        return score

    def row_score(self, loss: float, frames: int) -> float | None:
        return self.row_scorer()(loss, frames)

    def suspect_count(self, key: int) -> int:
        """How many earlier appearances of this cut passed repeat_threshold."""
        return self.suspects.get(key, 0)

    def warm(self, window: TrailingWindow) -> bool:
        return len(window) >= self.cfg.warmup_steps

    # -- judging --------------------------------------------------------------------------------

    def judge(self, values: StepValues) -> list[Signal]:
        """The anomalies of this step (empty: a healthy step). Call `update` afterwards."""
        cfg = self.cfg
        signals = []
        loss_bad = values.loss is not None and not math.isfinite(values.loss)
        if loss_bad or values.nonfinite_ranks:
            signals.append(Signal(NONFINITE_LOSS, values.loss, ranks=list(values.nonfinite_ranks)))
        elif values.grad_norm is not None and not math.isfinite(values.grad_norm):
            signals.append(Signal(NONFINITE_GRAD, values.grad_norm))
        if not signals:
            signals += _spike(self.loss, values.loss, cfg.loss_threshold, LOSS_SPIKE, self.warm(self.loss))
            signals += _spike(
                self.grad_norm, values.grad_norm, cfg.grad_norm_threshold, GRAD_NORM_SPIKE, self.warm(self.grad_norm)
            )
            if self.warm(self.row_deviation):
                first_sight = self._utterance(values.row_scores, cfg.row_loss_threshold, repeat=False)
                signals += first_sight or self._utterance(values.repeat_scores, cfg.repeat_threshold, repeat=True)
        return signals

    def _utterance(self, scores: list[float], threshold: float, repeat: bool) -> list[Signal]:
        worst = max(scores, default=0.0)
        if worst <= threshold:
            return []
        typical, spread = _known(self.typical_loss(), self.row_spread(), "utterance loss")
        ranks = [r for r, z in enumerate(scores) if z > threshold]
        # value: the worst utterance's loss
        return [Signal(UTTERANCE_LOSS, typical + worst * spread, typical, spread, worst, threshold, ranks, repeat)]

    def update(self, values: StepValues) -> None:
        """Add the step's finite values to the windows (spikes too: the median shrugs them off)."""
        self.loss.add(values.loss)
        self.grad_norm.add(values.grad_norm)
        self.row_deviation.add(values.row_deviation)
        for key in values.new_suspects:
            if key:
                self.suspects[key] = self.suspects.pop(key, 0) + 1
                while len(self.suspects) > MAX_SUSPECTS:
                    self.suspects.popitem(last=False)

    # -- checkpoints ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "loss": list(self.loss.values),
            "grad_norm": list(self.grad_norm.values),
            "row_deviation": list(self.row_deviation.values),
            "suspects": [[key, count] for key, count in self.suspects.items()],
        }

    def load_state_dict(self, state: dict) -> None:
        size = self.cfg.window
        self.loss = TrailingWindow(size, state.get("loss"))
        self.grad_norm = TrailingWindow(size, state.get("grad_norm"))
        self.row_deviation = TrailingWindow(size, state.get("row_deviation"))
        self.suspects = OrderedDict((int(key), int(count)) for key, count in state.get("suspects") or [])


def cut_key(cut_id: str) -> int:
    """A cut id as a 48-bit integer (never 0), the same in every process."""
    key = int.from_bytes(hashlib.blake2b(cut_id.encode(), digest_size=KEY_BYTES).digest(), "big")
    return key or 1


def _spike(window: TrailingWindow, value: float | None, threshold: float, kind: str, warm: bool) -> list[Signal]:
    if not warm or value is None or not math.isfinite(value):
        return []
    typical, spread = _known(window.median(), window.spread(), kind)
    z = (value - typical) / spread
    return [Signal(kind, value, typical, spread, z, threshold)] if z > threshold else []


def _known(typical: float | None, spread: float | None, what: str) -> tuple[float, float]:
    """What is typical, for a judgement that only runs warm (after warmup_steps >= 1 values)."""
    if typical is None or spread is None:
        raise RuntimeError(f"spike detector: {what} judged with no typical value yet (an empty window)")
    return typical, spread


def _round(value: float, digits: int = 5) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
