"""Studies: each one's numbers checked against what its design fixes exactly, or against the law it
tests, with tolerances from the sampling error; the CLI writes a self-contained report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from batchlab import load_workload
from batchlab.studies.run import run_study

from .helpers import assert_one_line_error, invoke, invoke_json


def test_noise_vs_batch_follows_the_sampling_law() -> None:
    """digits-mlp: E|g_B - G|^2 = tr(Sigma)/B (N-B)/(N-1) for batches drawn without replacement.
    Each ratio must lie within 4 of its measured standard errors (at least 64 draws and a training
    set's worth of examples per size, so the heavy tail of single-example errors is sampled). The
    fitted exponent over B <= N/8: per-point log-spread error ~0.09 over 8 points spread across
    ln B in [0, 4.9] gives a slope error ~0.02, the finite-population factor bends it by ~0.01; 0.08
    is over 3 sigma."""
    result = run_study("noise-vs-batch", "digits-mlp", device="cpu", draws=64)
    assert [r["batch_size"] for r in result.rows] == [2**k for k in range(10)]
    for row in result.rows:
        rel = row["mean_sq_stderr"] / row["law_sq"]
        assert abs(row["ratio"] - 1) < 4 * rel, row
    assert result.extra["exponent"] == pytest.approx(-0.5, abs=0.08)
    # |G|^2 B_simple = tr(Sigma): the law's spread crosses |G| at B_simple (finite-population aside).
    assert result.extra["b_simple"] * result.extra["grad_norm"] ** 2 == pytest.approx(
        result.extra["trace_sigma"], rel=1e-9
    )


def test_increase_batch_takes_fewer_updates_by_the_schedule() -> None:
    """The batch schedule's updates follow from the phases exactly: two epochs at each of 32, 64,
    128, 256 against eight epochs at 32; every arm sees the same number of epochs."""
    n = load_workload("digits-mlp").train_size
    result = run_study("increase-batch", "digits-mlp", device="cpu", epochs=8, milestones=[2, 4, 6], factor=2)
    rows = {r["group"]: r for r in result.rows}
    assert rows["decay-lr"]["updates"] == rows["constant"]["updates"] == 8 * (n // 32)
    assert rows["increase-batch"]["updates"] == 2 * sum(n // b for b in (32, 64, 128, 256))
    assert rows["increase-batch"]["examples"] == 2 * sum((n // b) * b for b in (32, 64, 128, 256))
    finals = [r["final_eval_loss"] for r in result.rows]
    assert all(v is not None and math.isfinite(v) for v in finals)
    assert any("fewer updates" in line for line in result.findings)
    # Epochs are passes over the data, counted per phase: every arm's curve ends at epoch 8 exactly.
    assert [run["curve"][-1]["epoch"] for run in result.runs] == pytest.approx([8, 8, 8])
    assert [p["epoch"] for p in result.runs[2]["curve"] if p["step"] == 2 * (n // 32)] == [2.0]


def test_increase_batch_with_a_cap_decays_the_rate_instead() -> None:
    result = run_study(
        "increase-batch", "digits-mlp", device="cpu", epochs=4, milestones=[1, 2, 3], max_batch_size=64
    )
    phases = result.settings["schedules"]["increase-batch"]["phases"]
    assert [(p["batch_size"], p["lr_factor"]) for p in phases] == [(32, 1), (64, 1), (64, 0.5), (64, 0.25)]
    assert any("cap of 64" in line for line in result.findings)


def test_generalization_records_gap_and_sharpness_and_matches_updates() -> None:
    """digits-mlp has no BatchNorm: the ghost arms are left out, and the finding says so. The longer
    arm runs exactly as many updates as the small batch."""
    n = load_workload("digits-mlp").train_size
    result = run_study("generalization", "digits-mlp", device="cpu", epochs=3, small=32, large=256)
    rows = {r["group"]: r for r in result.rows}
    assert set(rows) == {"small", "large", "large+longer"}
    assert rows["small"]["updates"] == 3 * (n // 32)
    assert rows["large+longer"]["updates"] == rows["small"]["updates"]
    for row in result.rows:
        assert row["sharpness"] > 0 and row["epsilon_sharpness"] > 0
        assert row["generalization_gap"] == pytest.approx(row["final_eval_loss"] - row["final_train_loss"])
    assert rows["large"]["lr"] == pytest.approx(0.05 * math.sqrt(256 / 32))
    assert any("no BatchNorm" in line for line in result.findings)


def test_cli_study_writes_a_self_contained_report(tmp_path: Path) -> None:
    data = invoke_json(
        "study", "lr-scaling", "--workload", "digits-mlp", "--epochs", "3", "--batch-sizes", "16,64",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert [(r["batch_size"], r["group"]) for r in data["rows"]] == [
        (16, "fixed"), (64, "fixed"), (16, "scaled"), (64, "scaled"),
    ]  # fmt: skip
    # The arms' rates: the reference's (digits-mlp: 0.05 at 32) fixed, and scaled by the linear rule.
    rates = {(r["batch_size"], r["group"]): r["lr"] for r in data["rows"]}
    assert rates == pytest.approx(
        {(16, "fixed"): 0.05, (64, "fixed"): 0.05, (16, "scaled"): 0.025, (64, "scaled"): 0.1}
    )
    # The finding reports the direction the distances show: scaling brought B=64 closer, or did not.
    fixed, scaled = (rows_64["curve_distance"] for rows_64 in data["rows"][1::2])
    said = " ".join(data["findings"])
    if scaled < fixed:
        assert "Scaling the learning rate brought B=64 closer." in said
    else:
        assert "At B=64 the scaled rate did not help" in said
    assert json.loads((tmp_path / "study.json").read_text())["findings"] == data["findings"]
    page = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page and 'src="/' not in page


def test_cli_study_refuses_another_studys_option(tmp_path: Path) -> None:
    result = invoke("study", "noise-vs-batch", "--epochs", "3", "--out", str(tmp_path))
    assert_one_line_error(result, "--epochs", "noise-vs-batch")


def test_a_large_batch_past_the_training_set_is_one_line(tmp_path: Path) -> None:
    """Found by the fuzz once it reached each study's own options: --large past the training set
    divided by zero (an epoch of it is 0 updates) and ended as an internal error."""
    result = invoke(
        "study", "generalization", "--workload", "linreg", "--large", "99999", "--out", str(tmp_path)
    )
    assert_one_line_error(result, "large must be at most the training set's size, 8192 (got 99999)")
