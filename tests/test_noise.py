"""The gradient noise scale: the estimator on hand-computed numbers, and measurements against exact
values from per-example gradients (linreg's closed form; torch.func on digits-mlp)."""

from __future__ import annotations

import math

import pytest
import torch

from batchlab import load_workload
from batchlab.core import noise_estimator as est
from batchlab.core.monitor import NoiseMonitor, split_loss
from batchlab.core.step import backward
from batchlab.measure.noise import EARLY_STOP_MIN, exact_noise_scale, measure_noise, noise_at_parameters
from batchlab.train.model import fresh_model
from batchlab.workloads import linreg

from .helpers import invoke_json


def test_two_batch_formulas_by_hand() -> None:
    """|G|^2 = 2, tr(Sigma) = 80: E|G_8|^2 = 2 + 80/8 = 12 and E|G_32|^2 = 2 + 80/32 = 4.5."""
    assert est.one_step(small_sq=12.0, big_sq=4.5, b_small=8, b_big=32) == pytest.approx((2.0, 80.0))


def test_finite_population_correction_by_hand() -> None:
    """Without replacement from N = 64: E|G_B|^2 = |G|^2 + tr(Sigma) (N - B) / ((N - 1) B)."""
    small = 2 + 80 * (64 - 8) / (63 * 8)
    big = 2 + 80 * (64 - 32) / (63 * 32)
    assert est.one_step(small_sq=small, big_sq=big, b_small=8, b_big=32, population=64) == pytest.approx(
        (2.0, 80.0)
    )


def test_ema_divides_smoothed_parts_not_ratios() -> None:
    """beta = 0.5, steps (|G|^2, tr) = (1, 10) then (3, 10): bias-corrected EMAs are 7/3 and 10,
    so B_simple = 30/7, not the mean of the ratios (10 + 10/3) / 2."""
    state = est.init()
    for g in (1.0, 3.0):  # with b=8, B=32: small = g + 10/8, big = g + 10/32
        state = est.update(state, small_sq=g + 1.25, big_sq=g + 0.3125, b_small=8, b_big=32, beta=0.5)
    reading = est.read(state)
    assert reading.grad_sq == pytest.approx(7 / 3)
    assert reading.trace_sigma == pytest.approx(10.0)
    assert reading.b_simple == pytest.approx(30 / 7)
    assert state.updates == 2


def test_a_decay_of_zero_forgets_the_past() -> None:
    """An update with beta = 0 (a gap far longer than the window) leaves only its own estimate:
    |G|^2 = 3, tr = 10, and one effective sample, so no standard error."""
    state = est.init()
    for g, beta in ((1.0, 0.9), (3.0, 0.0)):
        state = est.update(state, small_sq=g + 1.25, big_sq=g + 0.3125, b_small=8, b_big=32, beta=beta)
    reading = est.read(state)
    assert (reading.grad_sq, reading.trace_sigma) == pytest.approx((3.0, 10.0))
    assert reading.b_simple_stderr == math.inf


def test_the_monitor_measures_micro_and_whole_batch_norms() -> None:
    """Under accumulation (4 micro-batches of 8), the monitor's hooks give the mean |g_micro|^2 and
    |mean g|^2 that separate backward passes compute directly."""
    workload = load_workload("digits-mlp")
    x, y = workload.train_data[:32]
    model = fresh_model(workload, 0, torch.device("cpu"))
    with NoiseMonitor(model) as monitor:
        backward(model, workload.loss, (x, y), micro_batches=4)
        monitor.step(batch_size=32)
    grads = []
    for i in range(4):
        m = fresh_model(workload, 0, torch.device("cpu"))
        workload.loss(m(x[8 * i : 8 * i + 8]), y[8 * i : 8 * i + 8]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]))  # type: ignore[union-attr]
    small = sum(float(g @ g) for g in grads) / 4
    mean = sum(grads) / 4
    assert monitor.last_measurement is not None
    small_sq, big_sq, b_small, b_big = monitor.last_measurement
    assert small_sq == pytest.approx(small, rel=1e-5)
    assert big_sq == pytest.approx(float(mean @ mean), rel=1e-5)
    assert (b_small, b_big) == (8, 32)


def test_the_monitor_never_changes_what_the_optimizer_sees() -> None:
    """Twenty steps of a user's own loop with accumulation, with and without the monitor: the
    parameters are bitwise identical (its hooks read the gradients and return nothing)."""
    workload = load_workload("digits-mlp")
    finals = []
    for attach in (False, True):
        model = fresh_model(workload, 0, torch.device("cpu"))
        optimizer = workload.optimizer(model.parameters(), workload.lr)
        monitor = NoiseMonitor(model) if attach else None
        for step in range(20):
            x, y = workload.train_data[32 * step : 32 * step + 32]
            backward(model, workload.loss, (x, y), micro_batches=4)
            if monitor is not None:
                monitor.step(batch_size=32)
            optimizer.step()
            optimizer.zero_grad()
        finals.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        if monitor is not None:
            reading = monitor.reading()
            assert reading is not None and reading.measurements == 20 and reading.b_simple > 0
    assert torch.equal(finals[0], finals[1])


def test_with_one_batch_size_the_monitor_splits_an_occasional_step() -> None:
    """No accumulation, one process: `wants_split` asks for one step in `split_every`, and
    `backward` over two halves gives the whole batch's gradient (to rounding) and a measurement."""
    workload = load_workload("digits-mlp")
    model = fresh_model(workload, 0, torch.device("cpu"))
    reference = fresh_model(workload, 0, torch.device("cpu"))
    monitor = NoiseMonitor(model, split_every=3)
    asked = []
    for step in range(6):
        x, y = workload.train_data[32 * step : 32 * step + 32]
        asked.append(monitor.wants_split)
        if monitor.wants_split:
            monitor.backward(split_loss(model, workload.loss, x, y), parts=2)
        else:
            workload.loss(model(x), y).backward()
        workload.loss(reference(x), y).backward()
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7)  # type: ignore[arg-type]
        monitor.step(batch_size=32)
        model.zero_grad()
        reference.zero_grad()
    assert asked == [True, False, False, True, False, False]
    reading = monitor.reading()
    assert reading is not None and reading.measurements == 2


def test_linreg_matches_the_exact_value() -> None:
    """B_simple at the final parameters is within 10% of the closed form. The final pass averages
    tr(Sigma) over N/8 = 1024 micro-batches, each with relative spread sqrt(2 tr(S^2))/tr(S) ~ 0.35
    for S ~ I in d = 16, so ~1.1% standard error; |G|^2 is nearly exact (B_big = N). 10% is > 4 sigma."""
    estimate, model = measure_noise("linreg", micro_batches=4, device="cpu", keep_model=True)
    assert model is not None
    exact = linreg.exact_noise_scale(model)
    assert estimate.b_simple_stderr < 0.1 / 3 * estimate.b_simple
    assert estimate.b_simple == pytest.approx(exact["b_simple"], rel=0.10)
    assert estimate.trace_sigma == pytest.approx(exact["trace_sigma"], rel=0.10)


def test_noise_grows_as_the_loss_falls() -> None:
    """linreg: B_simple = (d+1) + d sigma^2/|delta|^2 grows as training shrinks delta."""
    estimate, _ = measure_noise("linreg", micro_batches=4, device="cpu")
    values = [p.b_simple for p in estimate.history if p.b_simple is not None]
    assert values[0] < 40 < 1000 < estimate.b_simple


def test_digits_mlp_matches_per_example_gradients() -> None:
    """digits-mlp: the estimate at the final parameters is within 20% of the exact value from
    per-example gradients over the whole training set (torch.func)."""
    workload = load_workload("digits-mlp")
    estimate, model = measure_noise(workload, micro_batches=4, device="cpu", keep_model=True)
    assert model is not None
    exact = exact_noise_scale(workload, model)
    assert estimate.b_simple == pytest.approx(exact["b_simple"], rel=0.20)


def test_cli_noise_json() -> None:
    """`batchlab noise --workload linreg --json` prints the parts and the history."""
    data = invoke_json("noise", "--workload", "linreg", "--steps", "100")
    for key in ("b_simple", "grad_sq", "trace_sigma", "history", "b_simple_stderr", "lr"):
        assert key in data
    assert data["b_simple"] == pytest.approx(data["trace_sigma"] / data["grad_sq"], rel=1e-9)
    assert len(data["history"]) > 10


def test_a_step_the_loop_clipped_is_left_out_and_counted() -> None:
    """Hugging Face's Trainer clips before its callbacks see the step; the step's own gradient is
    then gone, so the monitor leaves it out (and counts it) rather than read a clipped norm."""
    workload = load_workload("digits-mlp")
    x, y = workload.train_data[:32]
    for clip, measured in ((None, True), (1e3, True), (1e-3, False)):
        model = fresh_model(workload, 0, torch.device("cpu"))
        with NoiseMonitor(model) as monitor:
            backward(model, workload.loss, (x, y), micro_batches=4)
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            reading = monitor.step(batch_size=32, clip_norm=clip)
        assert (reading is not None) == measured
        assert monitor.clipped_steps == (0 if measured else 1)


def test_a_pass_read_to_a_relative_error_stops_early_and_stays_right() -> None:
    """linreg at its initial parameters (B_simple ~ 20, N = 8,192): a pass told to stop at 10%
    relative error stops at a doubling of 64 micro-batches, well before the 1,024 of the whole set,
    with its stated error within 10% of its value, and the exact value within 3 of those errors on
    every one of six data orders (one would miss by chance once in ~60 passes of six)."""
    workload = load_workload("linreg")
    cpu = torch.device("cpu")
    model = fresh_model(workload, 0, cpu)
    exact = linreg.exact_noise_scale(model)["b_simple"]
    whole = noise_at_parameters(model, workload, micro_batch=8, device=cpu)
    assert whole.micro_batches == workload.train_size // 8
    for seed in range(6):
        early = noise_at_parameters(model, workload, micro_batch=8, device=cpu, seed=seed, rel_error=0.1)
        assert early.micro_batches in {EARLY_STOP_MIN * 2**i for i in range(4)}, early
        assert early.b_simple_stderr <= 0.1 * early.b_simple
        assert abs(early.b_simple - exact) <= 3 * early.b_simple_stderr, (early, exact)


def test_a_reading_leaves_b_simple_out_of_its_metrics_until_grad_sq_is_resolved() -> None:
    """|G|^2 = -0.42 +- 0.3 (seen under a Trainer): B_simple = tr(Sigma) / |G|^2 is noise, so the
    metrics a logger takes carry tr(Sigma), |G|^2 and the steps measured, and the flag at 0; at
    |G|^2 = 0.5 +- 0.2 (2.5 standard errors) B_simple is in, with its standard error."""
    from batchlab.core.monitor import NoiseReading

    common = {"step": 8, "trace_sigma": 20.0, "measurements": 8}
    unresolved = NoiseReading(
        b_simple=math.inf, b_simple_stderr=math.inf, grad_sq=-0.42, grad_sq_stderr=0.3, **common
    )
    assert unresolved.metrics() == {
        "trace_sigma": 20.0,
        "grad_sq": -0.42,
        "noise_steps_measured": 8.0,
        "b_simple_resolved": 0.0,
    }
    assert unresolved.unresolved_because is not None and "-0.42 +- 0.3" in unresolved.unresolved_because
    edge = NoiseReading(b_simple=50.0, b_simple_stderr=30.0, grad_sq=0.4, grad_sq_stderr=0.2, **common)
    assert "b_simple" not in edge.metrics()  # exactly 2 standard errors: not above
    resolved = NoiseReading(b_simple=40.0, b_simple_stderr=20.0, grad_sq=0.5, grad_sq_stderr=0.2, **common)
    assert resolved.unresolved_because is None
    assert resolved.metrics()["b_simple"] == 40.0 and resolved.metrics()["b_simple_resolved"] == 1.0
