"""What a person reads: numbers as people write them, memory plots that show their points, and
sentences that read from the left."""

from __future__ import annotations

import re

import pytest

from batchlab.core.units import format_number
from batchlab.render.plots.measurements import memory_scale
from batchlab.render.report import render_report
from batchlab.render.tables import advice_table, render

MiB = 1024**2


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (17440.3, "17,440"),
        (889341.2, "889,341"),
        (1438.0, "1,438"),
        (671.94, "671.9"),
        (0.001864, "0.001864"),
        (1.2e-05, "1.2e-05"),
        (3e18, "3e+18"),
        (-2500.0, "-2,500"),
        (float("nan"), "nan"),
    ],
)
def test_numbers_read_as_people_write_them(value: float, text: str) -> None:
    assert format_number(value) == text


def _profile(limit_mib: float) -> dict[str, object]:
    return {
        "limit_bytes": int(limit_mib * MiB),
        "reserve_bytes": 0,
        "fixed_bytes": 90 * MiB,
        "per_sample_bytes": 0.1 * MiB,
        "trials": [
            {"batch_size": b, "fits": True, "peak_bytes": int((90 + 0.1 * b) * MiB)} for b in (1, 64, 256)
        ],
    }


def test_a_far_limit_is_written_not_drawn_so_the_points_show() -> None:
    """On a CPU the limit is the machine's memory (here 23 GiB) and the points are ~115 MiB: the
    axis ends 30% above the highest value (model at batch 256: 115.6 MiB), not at the limit."""
    ceiling, far = memory_scale(_profile(23 * 1024))
    assert far
    assert ceiling == pytest.approx(1.3 * 115.6)


def test_a_near_limit_is_the_top_of_the_plot() -> None:
    ceiling, far = memory_scale(_profile(200))
    assert not far and ceiling == pytest.approx(200)


def test_report_tables_print_thousands_with_separators() -> None:
    throughput = {
        "device": "cpu",
        "knee_batch_size": 64,
        "knee_gain": 0.1,
        "points": [
            {"batch_size": b, "fits": True, "step_seconds": b / rate, "samples_per_second": rate}
            for b, rate in ((16, 3886.4), (64, 17440.3))
        ],
    }
    page = render_report(workload="w", throughput=throughput)
    assert "17,440" in page and "3,886" in page
    assert "e+0" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # not 1.744e+04


def test_the_advice_rationale_reads_from_the_left(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI table's caption is sentences: each starts at the left edge, not centred."""
    data = {
        "workload": "w",
        "device": "cpu",
        "batch_size": 256,
        "lr": 0.4,
        "lr_rule": "noise",
        "predicted_seconds_to_target": 0.02,
        "predicted_speedup": 3.0,
        "measured_speedup": None,
        "max_batch_size": 256,
        "max_batch_size_is_lower_bound": True,
        "b_noise": 160.0,
        "knee_batch_size": 1024,
        "reference": {"batch_size": 32, "lr": 0.05, "seconds_to_target": 0.06},
        "rationale": ["Short line one.", "Short line two."],
        "limitations": [],
    }
    render(advice_table(data))
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("Short line one.") for line in lines), lines
    assert any(line.startswith("Short line two.") for line in lines), lines
