"""Convergence sweeps: the trade-off fit, divergence, resuming after SIGKILL, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from batchlab.core.store import Store
from batchlab.studies.sweep import fit_tradeoff, run_sweep

from .helpers import invoke_json

SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]


def test_fit_recovers_exact_parameters() -> None:
    """Points exactly on S = 1000 (1 + 200 / B) give S_min = 1000, B_crit = 200, E_min = 2e5."""
    fit = fit_tradeoff(SIZES, [1000 * (1 + 200 / b) for b in SIZES])
    assert fit.ok
    assert fit.s_min == pytest.approx(1000, rel=1e-6)
    assert fit.b_crit == pytest.approx(200, rel=1e-6)
    assert fit.e_min == pytest.approx(2e5, rel=1e-6)


def test_fit_interval_is_calibrated() -> None:
    """With 10% multiplicative noise on 8 points, the one-sigma interval for B_crit covers the truth
    in about 68% of draws: over 150 draws the binomial spread is 3.8%, so [0.56, 0.80] is +-3 sigma.
    The estimate itself stays within a factor 1.5 (log 1.5 = 0.41 is over 3 times the spread of
    log B_crit, ~0.12, measured over 200 draws)."""
    rng = np.random.default_rng(0)
    covered, errors = 0, []
    for _ in range(150):
        steps = [1000 * (1 + 200 / b) * float(np.exp(rng.normal(0, 0.1))) for b in SIZES]
        fit = fit_tradeoff(SIZES, steps)
        assert fit.ok and fit.b_crit and fit.b_crit_low and fit.b_crit_high
        covered += fit.b_crit_low <= 200 <= fit.b_crit_high
        errors.append(abs(np.log(fit.b_crit / 200)))
    assert 0.56 <= covered / 150 <= 0.80
    assert max(errors) < np.log(1.5)


def test_fit_needs_three_points() -> None:
    """Two batch sizes that reached the target are not enough: it says so, with no number."""
    fit = fit_tradeoff([32, 128], [100, 40])
    assert not fit.ok and fit.b_crit is None
    assert fit.reason is not None and fit.reason.startswith("not enough data")


def test_fit_says_when_b_crit_is_out_of_range() -> None:
    """Perfect scaling throughout (S = 10^5 / B) only bounds B_crit from below."""
    fit = fit_tradeoff(SIZES, [1e5 / b for b in SIZES])
    assert not fit.ok and "above" in (fit.reason or "")


def test_divergent_runs_are_recorded_and_the_sweep_goes_on() -> None:
    """A multiplier of 300 on linreg's learning rate diverges; the sweep records it, keeps going,
    and keeps the multiplier that trained as the best per batch size."""
    result = run_sweep(
        "linreg", batch_sizes=[16, 64], lr_multipliers=[1.0, 300.0], max_steps=400, device="cpu"
    )
    diverged = {(r.batch_size, r.lr_multiplier) for r in result.runs if r.diverged}
    assert diverged == {(16, 300.0), (64, 300.0)}
    assert [r.lr_multiplier for r in result.best] == [1.0, 1.0]
    assert all(r.reached_target for r in result.best)


def _sweep_process(out: Path) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "batchlab",
        "sweep",
        "--workload",
        "digits-mlp",
        "--batch-sizes",
        "8,32,128,512",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two at once on two cores: one thread each, or they thrash
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def _final_runs(out: Path) -> list[tuple[int, float, int, int | None, int]]:
    data = json.loads((out / "sweep.json").read_text())
    return sorted(
        (r["batch_size"], r["lr"], r["seed"], r["steps_to_target"], r["steps"]) for r in data["runs"]
    )


def test_sigkill_then_resume_loses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    """Kill a sweep mid-run with SIGKILL, run it again on the same store: the final runs equal an
    uninterrupted sweep's, each run is stored once, and none is left half-done."""
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    process = _sweep_process(killed)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until one run is done and the next has points
        if (killed / "results.db").exists():
            with Store(killed, lock=False) as store:  # a reader beside the sweep
                if store.count_runs("done") >= 1 and store.count_runs("running") == 1:
                    break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with Store(killed) as store:
        done_before = store.count_runs("done")
        assert store.count_runs("running") == 1 and 1 <= done_before < 4
    resumed = _sweep_process(killed)
    reference = _sweep_process(clean)
    assert resumed.wait(timeout=180) == 0 and reference.wait(timeout=180) == 0
    assert _final_runs(killed) == _final_runs(clean)
    data = json.loads((killed / "sweep.json").read_text())
    assert sum(r["reused"] for r in data["runs"]) == done_before
    with Store(killed) as store:
        assert store.count_runs("done") == 4 and store.count_runs("running") == 0


def test_cli_sweep_acceptance(tmp_path: Path) -> None:
    """The acceptance command: runs and fit in the JSON; steps fall as the batch grows, then flatten."""
    data = invoke_json(
        "sweep", "--workload", "digits-mlp", "--batch-sizes", "8,32,128,512", "--out", str(tmp_path)
    )
    keys = {
        "batch_size",
        "lr",
        "seed",
        "steps_to_target",
        "examples_to_target",
        "seconds_to_target",
        "diverged",
        "final_train_loss",
        "final_eval_loss",
        "sharpness",
        "epsilon_sharpness",
    }
    assert all(keys <= set(r) for r in data["runs"])
    # Each final model's sharpness, measured: SGD with momentum 0.9 is only stable where the top
    # eigenvalue is below (2 + 2 * 0.9) / lr (Cohen et al. 2021), and a trained model's is positive.
    assert all(0 < r["sharpness"] < 3.8 / r["lr"] and r["epsilon_sharpness"] > 0 for r in data["runs"])
    assert {"s_min", "e_min", "b_crit"} <= set(data["fit"])
    steps = [r["steps_to_target"] for r in data["best"]]
    assert all(s is not None for s in steps)
    assert steps[0] > steps[1] > steps[2] >= steps[3]
    # Flattening: 8 -> 32 cuts steps by more than 2x; 128 -> 512 by less than 2x.
    assert steps[0] / steps[1] > 2 > steps[2] / steps[3]
    assert (tmp_path / "sweep_steps.png").stat().st_size > 1000


def test_the_steps_plot_of_a_sweep_where_nothing_reached_the_target_says_so_without_a_warning() -> None:
    """A legend with nothing in it is a matplotlib warning (the fuzzed sweeps hit it); the plot says
    in words that no run got there, and is still a PNG."""
    import warnings

    from batchlab.render import plots

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = plots.steps_to_target([{"batch_size": 8, "steps_to_target": None}], {"ok": False})
    assert png.startswith(b"\x89PNG")
