"""What every figure shares: a headless matplotlib figure, plain-number log axes, PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import Formatter, LogFormatter, ScalarFormatter

from batchlab.core.units import format_number

Figure = dict[str, Any]


@contextmanager
def figure(ncols: int = 1) -> Iterator[tuple[Any, list[Axes]]]:
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.6), squeeze=False)
    try:
        yield fig, list(axes[0])
    finally:
        plt.close(fig)


class PlainNumbers(Formatter):
    """Tick labels as people write numbers (800,000; 0.04; 1,024), not 8e5, 4x10^-2 or 2^10.
    Which ticks get a label stays the decision of the formatter it wraps."""

    def __init__(self, inner: Formatter) -> None:
        self.inner = inner

    def set_axis(self, axis: Any) -> None:
        super().set_axis(axis)
        self.inner.set_axis(axis)

    def set_locs(self, locs: Any) -> None:
        super().set_locs(locs)
        self.inner.set_locs(locs)

    def __call__(self, x: float, pos: int | None = None) -> str:
        return format_number(x) if self.inner(x, pos) else ""


def plain_numbers(fig: Any) -> None:
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for get, put in (
                (axis.get_major_formatter, axis.set_major_formatter),
                (axis.get_minor_formatter, axis.set_minor_formatter),
            ):
                inner = get()
                if isinstance(inner, (ScalarFormatter, LogFormatter)):
                    put(PlainNumbers(inner))


def png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    plain_numbers(fig)
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
