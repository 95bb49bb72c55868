"""Checkpoints and branches, the branched critical batch against linear regression's exact
dynamics, and the ramp built from it."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

from batchlab import BatchlabError, Target, Workload
from batchlab.advise.ramp import schedule_advice
from batchlab.core.store import Store
from batchlab.lr import optimizer_rule, rate_for, scale_lr
from batchlab.measure.branches import BRANCH_EVALS, SMOOTHING, critical_from_branches
from batchlab.schedule import BatchSchedule
from batchlab.studies.run import run_study
from batchlab.train.run import train
from batchlab.workloads import linreg, load_workload

from .helpers import assert_one_line_error, invoke, invoke_json


def _adam_dropout() -> Workload:
    """Adam (moments to restore) and dropout (random state to restore), on a separable problem."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(600, 10, generator=g)
    y = (x[:, :3].sum(dim=1) > 0).long()

    def model() -> nn.Module:
        return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))

    return Workload(
        name="adam-dropout",
        model=model,
        train_data=TensorDataset(x[:500], y[:500]),
        eval_data=TensorDataset(x[500:], y[500:]),
        loss=nn.functional.cross_entropy,
        optimizer=lambda params, lr: torch.optim.Adam(params, lr=lr),
        batch_size=16,
        lr=3e-3,
        target=Target(metric="eval_loss", value=0.3),
    )


@pytest.mark.parametrize("workload", ["digits-cnn", "adam-dropout"])
def test_a_run_resumed_at_its_own_settings_repeats_the_unbranched_curve(
    workload: str, tmp_path: Path
) -> None:
    wl = _adam_dropout() if workload == "adam-dropout" else workload
    # 70 steps of 32 on a 1,437-example set cross an epoch boundary after the checkpoint at 40.
    full = train(wl, batch_size=32, max_steps=70, checkpoint_at=[40], checkpoint_dir=tmp_path, seed=5)
    assert [c["step"] for c in full.checkpoints] == [40]
    resumed = train(wl, batch_size=32, max_steps=70, resume_from=full.checkpoints[0]["path"], seed=5)
    before = {p.step: p for p in full.curve}
    assert resumed.curve[0].step == 40 and resumed.resumed_from["step"] == 40
    assert resumed.curve[0].train_loss == before[40].train_loss  # the same parameters
    common = [p for p in resumed.curve if p.step in before]
    assert len(common) >= 5
    for point in common:  # bit for bit on the CPU: the same examples, moments and dropout masks
        assert point.train_loss == before[point.step].train_loss
        assert point.eval_loss == before[point.step].eval_loss
        assert point.examples == before[point.step].examples
    assert resumed.steps == full.steps == 70 and resumed.examples == full.examples
    assert resumed.final_eval_loss == full.final_eval_loss


def test_a_branch_sees_the_same_examples_in_order_at_a_larger_batch(tmp_path: Path) -> None:
    """From a checkpoint, one step of 2B covers the examples of two steps of B: with plain SGD on a
    linear model and the rate doubled, one step of 2B equals two steps of B to first order in the
    rate; with a tiny rate they agree to 1e-6."""
    wl = dataclasses.replace(linreg.workload(), lr=1e-4)
    saved = train(
        wl, batch_size=8, max_steps=10, checkpoint_at=[10], checkpoint_dir=tmp_path, keep_model=True
    )
    path = saved.checkpoints[0]["path"]
    small = train(wl, batch_size=8, lr=1e-4, max_steps=12, resume_from=path, keep_model=True)
    large = train(wl, batch_size=16, lr=2e-4, max_steps=11, resume_from=path, keep_model=True)
    assert small.examples == large.examples == 10 * 8 + 16
    moved_small = linreg.weights(small.model) - linreg.weights(saved.model)
    moved_large = linreg.weights(large.model) - linreg.weights(saved.model)
    assert float((moved_small - moved_large).norm()) < 1e-3 * float(moved_small.norm())


def test_a_branch_on_another_data_order_draws_its_batches_from_that_seed(tmp_path: Path) -> None:
    """`data_seed` redraws the epoch's permutation from a generator seeded with it, at the same
    offset: the first batch after the checkpoint is order[offset : offset + B] of that permutation,
    so its mini-batch loss at the checkpoint's parameters is known exactly; the same seed repeats
    the run, the checkpoint's own order gives another batch."""
    from batchlab.train.model import fresh_model

    wl = linreg.workload()
    saved = train(wl, batch_size=8, max_steps=10, checkpoint_at=[10], checkpoint_dir=tmp_path)
    path = saved.checkpoints[0]["path"]
    kw: dict = dict(batch_size=8, lr=0.02, max_steps=11, eval_every=1, resume_from=path)
    other = train(wl, data_seed=3, **kw)
    again = train(wl, data_seed=3, **kw)
    own = train(wl, **kw)
    assert other.curve[-1].batch_loss == again.curve[-1].batch_loss
    assert other.curve[-1].batch_loss != own.curve[-1].batch_loss
    model = fresh_model(wl, 0, torch.device("cpu"))
    model.load_state_dict(torch.load(path, weights_only=True)["model"])
    x, y = wl.train_data.tensors  # type: ignore[attr-defined]
    offset = (10 * 8) % len(x)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))[offset : offset + 8]
    with torch.no_grad():
        expected = float(wl.loss(model(x[order]), y[order]))
    assert other.curve[-1].batch_loss == pytest.approx(expected, rel=1e-6)
    with pytest.raises(BatchlabError, match="data_seed"):
        train(wl, batch_size=8, max_steps=5, data_seed=3)  # a fresh run's order is its seed


def test_bad_checkpoint_settings_get_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(BatchlabError, match="checkpoint_dir"):
        train("linreg", batch_size=32, max_steps=5, checkpoint_at=[2])
    with pytest.raises(BatchlabError, match="checkpoint_at"):
        train("linreg", batch_size=32, max_steps=5, checkpoint_at=[1.5], checkpoint_dir=tmp_path)
    with pytest.raises(BatchlabError, match="an existing checkpoint file"):
        train("linreg", batch_size=32, max_steps=5, resume_from=tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(BatchlabError, match="a checkpoint saved by batchlab"):
        train("linreg", batch_size=32, max_steps=5, resume_from=tmp_path / "junk.pt")
    saved = train("linreg", batch_size=32, max_steps=4, checkpoint_at=[0.5], checkpoint_dir=tmp_path)
    assert [c["step"] for c in saved.checkpoints] == [2]
    with pytest.raises(BatchlabError, match="a checkpoint of digits-mlp"):
        train("digits-mlp", batch_size=32, max_steps=5, resume_from=saved.checkpoints[0]["path"])


# The branched critical batch against linear regression's exact expected dynamics ------------------


def _expected_branch_losses(
    m0: float, *, lr: float, b: int, ks: list[int], length: int, noise: float, both: bool
) -> dict[int, float]:
    """E|w - w_hat|^2 along SGD on half squared error with x ~ N(0, I_d): one step at batch B and rate
    eta maps m to ((1 - eta)^2 + eta^2 (d + 1) / B) m + eta^2 d sigma^2 / B (science.md, Gaussian
    fourth moments), smoothed at the evaluations the study makes (the last SMOOTHING of a branch's
    BRANCH_EVALS). Half of it is the excess loss, so progress ratios follow from it."""
    d = linreg.DIM

    def smoothed(eta: float, batch: int) -> float:
        steps = length // batch
        c = (1 - eta) ** 2 + eta**2 * (d + 1) / batch
        m, values = m0, []
        every = max(1, steps // BRANCH_EVALS)
        for step in range(1, steps + 1):
            m = c * m + eta**2 * d * noise / batch
            if (step % every == 0 or step == steps) and step >= (1 - SMOOTHING) * steps:
                values.append(m)
        return 0.5 * sum(values) / len(values)

    if not both:  # SGD's linear rule alone
        return {k: smoothed(k * lr, k * b) for k in ks}
    # Each branch keeps the better of SGD's linear rate and the square-root one (branch_rules).
    return {k: min(smoothed(k * lr, k * b), smoothed(math.sqrt(k) * lr, k * b)) for k in ks}


@pytest.mark.parametrize("branch_rates", ["rule", "both"])
def test_the_branched_critical_batch_matches_linear_regressions_exact_dynamics(
    branch_rates: str, tmp_path: Path
) -> None:
    """On linreg the expected branch losses are known in closed form at any parameters, so the
    critical batch the rule should find at each checkpoint is too. The measurement is one SGD run a
    branch on a finite training set (whose covariance departs from I by ~sqrt(d/N) = 4%, which moves
    the largest rates' progress); near the rule's threshold that can flip one grid step, so each
    point must be within a factor of 2 (one grid step) of the exact answer, and most must be exact.
    The target sits well above the loss floor, so that a branch's progress stands clear of SGD's
    stationary fluctuation (eta d sigma^2 / 2B ~ 0.1 in m here). With the linear rule alone the
    largest rates' noise floor (eta d sigma^2 / 2B, constant in k, until (1 - eta)^2 turns) puts the
    answer inside the grid; with the square-root rate beside it, whose floor falls as 1/sqrt(k), the
    exact answer is the top of the grid, and the measurement must say so."""
    target = Target(metric="eval_loss", value=0.75)
    wl = dataclasses.replace(linreg.workload(), batch_size=8, lr=0.1, target=target)
    with Store(tmp_path / "results.db") as store:
        study = run_study(
            "critical-batch",
            wl,
            store=store,
            max_k=16,
            branch_rates=branch_rates,
            validation_seeds=1,
            tune_lr=False,  # the closed form is at this rate
        )
    x, y = linreg._data()[0].double(), linreg._data()[1].double()
    w_hat = torch.linalg.lstsq(x, y).solution
    noise = float((x @ w_hat - y).pow(2).mean())  # the residual variance at the empirical minimum
    length, ks = study.settings["branch_examples"], study.settings["ks"]
    assert ks == [1, 2, 4, 8, 16]
    exact_hits, measured = 0, []
    for row in study.rows:
        path = tmp_path / "checkpoints" / "b8-seed0" / f"step-{row['step']:08d}.pt"
        w = torch.load(path, weights_only=True)["model"]["linear.weight"].reshape(-1).double()
        m0 = float((w - w_hat).pow(2).sum())
        expected = _expected_branch_losses(
            m0, lr=0.1, b=8, ks=ks, length=length, noise=noise, both=branch_rates == "both"
        )
        k_exact = critical_from_branches(0.5 * m0, expected)
        assert k_exact is not None
        measured.append((row["critical_batch"], 8 * k_exact))
        assert row["critical_batch"] is not None
        assert 0.5 <= row["critical_batch"] / (8 * k_exact) <= 2, measured
        exact_hits += row["critical_batch"] == 8 * k_exact
    assert exact_hits >= len(study.rows) / 2, measured
    if branch_rates == "rule":  # the answer lies inside the grid: a measurement could miss either side
        assert any(1 < k // 8 < 16 for _, k in measured), measured
    else:
        assert all(k == 8 * 16 for _, k in measured), measured


def test_the_reference_rate_is_tuned_up_where_the_workloads_rate_is_too_low(tmp_path: Path) -> None:
    """SGD on linreg far below its stability limit (lr 0.02, Hessian ~ I): the excess loss decays as
    (1 - lr)^(2t), so the steps to the target scale as 1/lr and each doubling saves ~half of them,
    far past the 10% a doubling must save: the search doubles three times, to 8x, on both seeds (no
    fixed bound stops it at 4x). SGD's noise floor (~lr d / 2B, 0.02 of the 0.04 excess the target
    allows at 0.08) doubles with each doubling: at 0.32 it holds the loss around the target, and
    seed 0 misses it within 90% of 0.16's steps, which ends the search. The floor adds ~4 of ~40
    steps at 0.08 and the loss wanders around the target by as much, so one seed's count moves by
    ~10% plus the 1/16 resolution: the bound is on both seeds' steps together, 0.5 within 0.1 /
    +0.15. A given rate is used as it is; without tuning, the rule scales the workload's rate."""
    from batchlab.studies.critical import reference_rate

    wl = linreg.workload()
    with Store(tmp_path / "results.db") as store:
        lr, rate = reference_rate(
            wl, 32, lr=None, tune=True, store=store, device=torch.device("cpu"), say=print
        )
        assert lr == pytest.approx(8 * 0.02) and rate["source"] == "tuned"
        assert [c["lr"] for c in rate["checks"]] == pytest.approx(
            [0.02, 0.02, 0.04, 0.04, 0.08, 0.08, 0.16, 0.16, 0.32]
        )
        assert rate["checks"][-1]["steps_to_target"] is None
        assert rate["stopped_because"] == "0.32 did not reach the target in 10% fewer steps"
        steps = [c["steps_to_target"] for c in rate["checks"][:-1]]
        both = [a + b for a, b in zip(steps[::2], steps[1::2], strict=True)]  # both seeds at a rate
        assert all(0.4 <= b / a <= 0.65 for a, b in itertools.pairwise(both)), steps
        again = reference_rate(wl, 32, lr=None, tune=True, store=store, device=torch.device("cpu"), say=print)
        assert again == (lr, rate)  # reused from the store
    assert reference_rate(wl, 64, lr=None, tune=False, store=None, device=torch.device("cpu"), say=print)[
        0
    ] == pytest.approx(0.04)
    assert reference_rate(wl, 64, lr=0.01, tune=True, store=None, device=torch.device("cpu"), say=print) == (
        0.01,
        {"lr": 0.01, "source": "given", "start": 0.01},
    )


def test_branches_over_two_data_orders_keep_the_mean_of_their_losses(tmp_path: Path) -> None:
    wl = linreg.workload()
    with Store(tmp_path / "results.db") as store:
        study = run_study(
            "critical-batch",
            wl,
            store=store,
            points=[0.25, 0.5],
            max_k=4,
            branch_orders=2,
            validation_seeds=1,
            tune_lr=False,
        )
    assert study.settings["branch_orders"] == 2
    branches = study.extra["branches"]
    assert len(branches) == 2 * (1 + 2 + 2)  # two points; k = 1, then 2 and 4 at both rates
    for arm in branches:
        first, second = arm["order_losses"]
        assert first != second  # other examples, another trajectory
        assert arm["loss"] == pytest.approx((first + second) / 2, rel=1e-12)
    with pytest.raises(BatchlabError, match="branch_orders"):
        run_study("critical-batch", wl, branch_orders=0)


# The ramp -------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    batch=st.sampled_from([1, 8, 32, 48]),
    criticals=st.lists(st.floats(min_value=0.5, max_value=1e5), min_size=1, max_size=6),
    cap_factor=st.sampled_from([None, 1, 3, 16, 100]),
    rule=st.sampled_from(["linear", "sqrt", "none"]),
)
def test_the_ramp_never_shrinks_never_passes_the_cap_and_its_rate_follows_the_rule(
    batch: int, criticals: list[float], cap_factor: int | None, rule: str
) -> None:
    points = [(1000 * (i + 1), c) for i, c in enumerate(criticals)]
    cap = None if cap_factor is None else batch * cap_factor
    ramp = BatchSchedule.ramp(points, batch_size=batch, rule=rule, max_batch_size=cap)
    sizes = [p.batch_size for p in ramp.phases]
    assert sizes[0] == batch and ramp.phases[0].lr_factor == 1.0
    assert all(b > a for a, b in itertools.pairwise(sizes))  # grows at each new phase
    assert cap is None or max(sizes) <= cap
    for phase in ramp.phases:
        expected = scale_lr(rule, lr_ref=1.0, batch_ref=batch, batch_size=phase.batch_size)
        assert math.isclose(phase.lr_factor, expected, rel_tol=1e-12)
        # Never past what any measurement from its start on allows (unless it is the first batch).
        later = [c for e, c in points if e >= (phase.start_examples or 0)]
        if phase.batch_size > batch:
            assert phase.batch_size <= min(later)
            assert any(e == phase.start_examples for e, _ in points)


def test_the_ramp_doubles_where_the_critical_batch_passes_twice_the_batch() -> None:
    ramp = BatchSchedule.ramp([(100, 50), (300, 70), (600, 300), (900, 1000)], batch_size=16, rule="sqrt")
    assert [(p.start_examples, p.batch_size) for p in ramp.phases] == [  # one doubling a point
        (0, 16),
        (100, 32),
        (300, 64),
        (600, 128),
        (900, 256),
    ]
    assert [p.lr_factor for p in ramp.phases] == pytest.approx([1, math.sqrt(2), 2, math.sqrt(8), 4])
    held = BatchSchedule.ramp([(100, 500), (300, 40)], batch_size=16)  # a later fall holds it back
    assert [p.batch_size for p in held.phases] == [16, 32]


def test_a_ramp_trains_through_train_and_the_sampler_with_its_batch_changing_mid_epoch() -> None:
    ramp = BatchSchedule.ramp([(100, 64)], batch_size=16, rule="linear", factor=4)  # 16 until 112, then 64
    result = train("linreg", batch_size=ramp, max_steps=20, eval_every=1)
    sizes = [p.batch_size for p in result.curve[1:]]
    assert sizes == [16] * 7 + [64] * 13  # 7 x 16 = 112 >= 100: the 8th step is the first of 64
    expected = [0.02 * s / 32 for s in sizes]  # the reference is 32 at 0.02, the rule linear
    assert [p.lr for p in result.curve[1:]] == pytest.approx(expected, rel=1e-12)
    assert result.examples == 7 * 16 + 13 * 64
    sampler = ramp.batch_sampler(200, seed=1)
    batches = list(sampler)
    assert [len(b) for b in batches] == [16] * 7 + [64]  # 112 + 64 = 176; the next 64 would not fit
    assert len(sampler) == len(batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat)
    sampler.set_epoch(1)
    assert [len(b) for b in sampler] == [64, 64, 64]


# From the command line ------------------------------------------------------------------------------


def test_cli_study_saves_a_ramp_that_train_takes_and_resumes_from_its_runs(tmp_path: Path) -> None:
    out = tmp_path / "study"
    args = ("study", "critical-batch", "--workload", "linreg", "--max-k", "4", "--out", str(out))
    data = invoke_json(*args)
    steps = data["settings"]["reference_steps_to_target"]
    fractions = [r["fraction"] for r in data["rows"]]
    assert fractions == pytest.approx([0.1, 0.25, 0.5, 0.75], abs=0.5 / steps + 1e-12)  # the nearest steps
    assert data["settings"]["lr_source"] == "tuned"  # linreg's rate 0.02 is 8x too low
    assert [c["lr"] for c in data["extra"]["lr_tuning"]] == pytest.approx(
        [0.02, 0.02, 0.04, 0.04, 0.08, 0.08, 0.16, 0.16, 0.32]
    )
    assert data["settings"]["lr"] == pytest.approx(0.16)
    branches = data["extra"]["branches"]
    assert len(branches) == 4 * (1 + 2 + 2)  # k = 1, then 2 and 4 at the linear and the sqrt rate
    for (_step, k), group in itertools.groupby(branches, key=lambda a: (a["step"], a["k"])):
        arms = list(group)
        assert [a["rule"] for a in arms] == (["linear"] if k == 1 else ["linear", "sqrt"])
        kept = [a for a in arms if a["chosen"]]
        assert len(kept) == 1 and kept[0]["loss"] == min(a["loss"] for a in arms)
    for phase in data["extra"]["ramp"]["phases"][1:]:  # each phase at a rate its branches kept
        rates = {a["lr"] for a in branches if a["chosen"] and a["batch_size"] == phase["batch_size"]}
        assert phase["lr_factor"] * data["settings"]["lr"] in rates
    validation = data["extra"]["validation"]
    assert {v["group"] for v in validation} == {"constant", "ramp"}
    for arm in validation:  # three seeds a side by default: the median of theirs, the mean loss
        per_seed = arm["per_seed"]
        assert [s["seed"] for s in per_seed] == [0, 1, 2]
        assert len({s["final_loss"] for s in per_seed}) == 3  # different seeds, different runs
        if arm["reached"] == 3:
            assert arm["updates_to_target"] == sorted(s["updates_to_target"] for s in per_seed)[1]
        assert arm["final_loss"] == pytest.approx(sum(s["final_loss"] for s in per_seed) / 3)
    ramp = json.loads((out / "ramp.json").read_text())
    assert ramp == data["extra"]["ramp"]
    assert "data:image/png;base64," in (out / "report.html").read_text()
    with Store(out / "results.db", lock=False) as store:
        done = store.count_runs("done")
    again = invoke_json(*args)  # everything reused from the store and the checkpoints
    assert again["rows"] == data["rows"]
    with Store(out / "results.db", lock=False) as store:
        assert store.count_runs("done") == done
    trained = invoke_json(
        "train", "--workload", "linreg", "--batch-schedule", str(out / "ramp.json"), "--max-steps", "50"
    )
    assert trained["batch_schedule"] == (ramp if len(ramp["phases"]) > 1 else None)
    assert trained["batch_size"] == ramp["phases"][0]["batch_size"]


def test_cli_bad_critical_batch_and_schedule_input_is_one_line(tmp_path: Path) -> None:
    result = invoke(
        "study", "critical-batch", "--workload", "linreg", "--points", "0.5,1.5", "--out", str(tmp_path)
    )
    assert_one_line_error(result, "points", "fractions in (0, 1)")
    result = invoke(
        "study", "critical-batch", "--workload", "linreg", "--epsilon", "2", "--out", str(tmp_path)
    )
    assert_one_line_error(result, "epsilon", "(0, 1)")
    result = invoke("study", "critical-batch", "--workload", "linreg", "--lr", "-1", "--out", str(tmp_path))
    assert_one_line_error(result, "lr", "> 0")
    result = invoke("study", "lr-scaling", "--workload", "linreg", "--keep-lr", "--out", str(tmp_path))
    assert_one_line_error(result, "--keep-lr", "another study")
    result = invoke("train", "--workload", "linreg", "--batch-schedule", str(tmp_path / "none.json"))
    assert_one_line_error(result, "--batch-schedule", "an existing file")
    (tmp_path / "bad.json").write_text(
        '{"phases": [{"batch_size": 8, "start_epoch": 0, "lr_factor": 1, "x": 1}]}'
    )
    result = invoke("train", "--workload", "linreg", "--batch-schedule", str(tmp_path / "bad.json"))
    assert_one_line_error(result, "batch_schedule.phases", "ramp.json")
    (tmp_path / "ok.json").write_text('{"phases": [{"batch_size": 8, "start_examples": 0, "lr_factor": 1}]}')
    result = invoke(
        "train", "--workload", "linreg", "--batch-schedule", str(tmp_path / "ok.json"), "-b", "16"
    )
    assert_one_line_error(result, "--batch-size", "--batch-schedule")


def _check_ramp_plan(plan: dict, batch_size: int) -> None:
    phases = plan["ramp"]["phases"]
    assert phases[0]["batch_size"] == batch_size  # the ramp starts at the advice
    assert plan["offered"] == (
        len(phases) > 1 and plan["predicted_updates_to_target"] < plan["constant_updates_to_target"]
    )
    assert plan["predicted_updates_to_target"] <= plan["worst_case_updates"]
    for phase in phases:  # SGD: the rate grows with the batch by the linear or the sqrt rule, as kept
        ratio = phase["batch_size"] / batch_size
        assert min(abs(phase["lr_factor"] - ratio), abs(phase["lr_factor"] - math.sqrt(ratio))) < 1e-9
    assert 1 <= len(plan["points"]) <= 4  # fewer when the run is too short for four distinct steps


def test_a_ramp_from_an_advised_point_is_offered_where_it_saves_updates() -> None:
    """linreg at batch 512 (the sqrt rule's rate): the critical batch measured along the run passes
    twice 512, and the ramp up to the whole set takes fewer updates than the constant batch."""
    workload = load_workload("linreg")
    lr = rate_for(workload, 512, optimizer_rule(workload))
    plan = schedule_advice(workload, batch_size=512, lr=lr, max_batch_size=workload.train_size)
    _check_ramp_plan(plan, 512)
    assert plan["offered"] and len(plan["ramp"]["phases"]) > 1


def test_cli_advise_schedule_offers_a_ramp_only_when_it_saves_updates(tmp_path: Path) -> None:
    """The ramp starts at the advised point; where that is within a doubling of the memory cap
    (linreg's advice is 4096 or its whole set, 8192, as this machine's step times fall) there is no
    room, and nothing is measured."""
    data = invoke_json(
        "advise", "--workload", "linreg", "--schedule", "--full-memory", "--out", str(tmp_path)
    )
    plan, b, cap = data["schedule"], data["batch_size"], data["max_batch_size"]
    if cap < 2 * b:
        assert plan == {"offered": False, "why": f"the memory cap {cap} leaves no room to double batch {b}"}
    else:
        _check_ramp_plan(plan, b)
    assert json.loads((tmp_path / "advice.json").read_text())["schedule"] == plan
    assert "A batch ramp" in (tmp_path / "report.html").read_text()


def test_the_branched_rule_on_numbers_worked_by_hand() -> None:
    """From a loss of 4 the k = 1 branch falls to 3 (progress 1; every number here is exact in
    binary). With epsilon 1/4 a branch keeps up when it falls by at least 3/4: k = 2 to 3.125 (7/8)
    does, k = 4 to 3.25 (exactly 3/4, the threshold itself) does, k = 8 to 3.375 (5/8) does not, and
    k = 16's fall (7/8) cannot count past the branch that failed. No progress at k = 1 leaves
    nothing to compare with."""
    losses = {1: 3.0, 2: 3.125, 4: 3.25, 8: 3.375, 16: 3.125}
    assert critical_from_branches(4.0, losses, epsilon=0.25) == 4
    assert critical_from_branches(4.0, losses, epsilon=0.125) == 2  # 7/8 needed: k = 2 exactly, k = 4 short
    assert critical_from_branches(4.0, {1: 3.0, 2: 3.5}, epsilon=0.25) == 1
    assert critical_from_branches(4.0, {1: 4.0, 2: 3.0}, epsilon=0.25) is None  # k = 1 made no progress
    assert critical_from_branches(4.0, {1: 4.5, 2: 3.0}, epsilon=0.25) is None  # ... or went backwards
