"""matplotlib, only where a picture is drawn: the core install does not need it.

Figures are made with the object API (`matplotlib.figure.Figure`) and rendered by Agg: no pyplot
global state, no display, the same pixels on a laptop and in CI.
"""

from __future__ import annotations

import io

from nestkit.core.errors import NestkitError

EXTRA = "report"
DPI = 110
# one colour per kind of thing, the same in every figure
COLORS = {
    "train": "#1f77b4",
    "validation": "#d62728",
    "data wait": "#ff7f0e",
    "compute": "#2ca02c",
    "peer wait": "#9e9e9e",
    "stall": "#d62728",
    "anomaly": "#9467bd",
    "resume": "#17becf",
    "world size": "#8c564b",
    "straggler": "#ff7f0e",
    "bad data": "#7f7f7f",
    "noise": "#ff7f0e",
    "speech": "#9467bd",
    "mask": "#ffffff",
}


def require_matplotlib() -> None:
    """A one-line error naming the extra when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise NestkitError(
            f"matplotlib: not installed (expected it for figures, got ImportError). Install the extra: pip install 'nestkit[{EXTRA}]'"
        ) from None


def new_figure(width: float, height: float):
    """A Figure rendered by Agg (no pyplot): `width` x `height` inches."""
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()
