"""The advice and its report: the JSON, the prediction's arithmetic, a self-contained and escaped page."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import batchlab
from batchlab import load_workload
from batchlab.advise.evidence import CONTENDER_RATIO, CONTENDERS, SIDE_BY_SIDE_REPEATS
from batchlab.advise.model import (
    candidate_sizes,
    point_and_window_disagree,
    predict,
    throughput_stop,
)
from batchlab.advise.result import Prediction
from batchlab.lr import LrRule, lr_for
from batchlab.measure.lr_search import Measured, tune_lr
from batchlab.measure.throughput import ThroughputPoint, ThroughputProfile
from batchlab.render.report import render_report

from .helpers import invoke_json


def test_cli_advise_acceptance(tmp_path: Path) -> None:
    """`batchlab advise --json` prints the documented keys and writes a self-contained report."""
    data = invoke_json("advise", "--workload", "digits-mlp", "--out", str(tmp_path))
    for key in (
        "batch_size",
        "lr",
        "lr_rule",
        "predicted_seconds_to_target",
        "predicted_speedup",
        "max_batch_size",
        "b_noise",
        "knee_batch_size",
        "reference",
    ):
        assert key in data
    assert set(data["reference"]) >= {"batch_size", "lr"}
    assert data["lr_rule"] == "noise"  # digits-mlp trains with SGD
    assert 1 <= data["batch_size"] <= data["max_batch_size"]
    fastest = min(data["predictions"], key=lambda p: p["seconds_to_target"])
    # The choice is made among the contenders, the batches predicted within CONTENDER_RATIO of the
    # fastest, timed again side by side (evidence.contenders_side_by_side): the fastest on those
    # times, or the smallest batch of a flat optimum around it (model.flat_choice).
    best = next(p for p in data["predictions"] if p["batch_size"] == data["batch_size"])
    assert best["seconds_to_target"] <= CONTENDER_RATIO * fastest["seconds_to_target"]
    text = " ".join(data["rationale"])
    contenders = [
        p["batch_size"]
        for p in sorted(data["predictions"], key=lambda p: p["seconds_to_target"])
        if p["seconds_to_target"] <= CONTENDER_RATIO * fastest["seconds_to_target"]
    ][:CONTENDERS]
    others = [b for b in sorted(contenders) if b != 32]
    if others:
        assert f"Batches {', '.join(map(str, others))} (predicted within {CONTENDER_RATIO:g}x" in text
    # The prediction is split at the cap: what fits, and what is drawn past it.
    assert all(p["batch_size"] <= data["max_batch_size"] for p in data["predictions"])
    assert all(p["batch_size"] > data["max_batch_size"] for p in data["predictions_past_cap"])
    assert data["model_steps_to_target"] == pytest.approx(best["steps_to_target"])
    # The time is the steps (measured by the tuning runs where they reached the target) x step time,
    # timed again beside the reference's where the batch moved (SIDE_BY_SIDE_REPEATS blocks each).
    timing = data["step_timing"]
    assert (timing is None) == (data["batch_size"] == data["reference"]["batch_size"])
    step = {p["batch_size"]: p["step_seconds"] for p in timing["points"]} if timing else {}
    assert not timing or (set(step) >= {data["batch_size"], 32} and timing["repeats"] == SIDE_BY_SIDE_REPEATS)
    assert data["predicted_seconds_to_target"] == pytest.approx(
        data["predicted_steps_to_target"] * step.get(data["batch_size"], best["step_seconds"])
    )
    tuned = [
        c["steps_to_target"]
        for c in data["lr_checks"]
        if c["batch_size"] == data["batch_size"]
        and c["lr"] == data["lr"]
        and c["steps_to_target"] is not None
    ]
    # The reference on the same footing: its steps (the mean over its seeds) x its step time, so the
    # two times give the speedup (its run's own clock ran slow, tracking the noise scale every step).
    ref = data["reference"]
    assert ref["seconds_to_target"] == pytest.approx(
        data["predicted_seconds_to_target"] * data["predicted_speedup"]
    )
    seeds = ref["seeds_steps_to_target"]
    assert seeds[0] == ref["steps_to_target"]  # the reference run's own, seed 0
    # The speedup at the seeds' extremes brackets it.
    spread = data["predicted_speedup_range"]
    assert spread is None or spread[0] <= data["predicted_speedup"] <= spread[1]
    at_reference = [c for c in data["lr_checks"] if c["batch_size"] == 32 and c["lr"] == ref["lr"]]
    if timing:  # the batch moved: the reference's seeds, at its step time from the same timing
        assert ref["seconds_to_target"] == pytest.approx(sum(seeds) / len(seeds) * step[32])
        # digits-mlp's reference trains in ~0.2 s, well within the advice's cost in proportion to it
        # (5 reference runs + 10 s): seed 1 trained too, and its steps joined seed 0's (and seeds 2
        # and 3, where each cost under a tenth of the advice so far).
        assert [c["steps_to_target"] for c in at_reference] == seeds[1:] and 2 <= len(seeds) <= 4
        assert data["phase_seconds"]["reference"] > 0
        listed = ", ".join(str(n) for n in seeds[:-1]) + f" and {seeds[-1]}"
        assert f"at {step[32] * 1e3:.3g} ms, the mean of {len(seeds)} seeds' {listed})." in " ".join(
            data["rationale"]
        )
    if tuned:  # their mean over the seeds that reached it
        assert data["predicted_steps_to_target"] == pytest.approx(sum(tuned) / len(tuned))
    # B_noise from the final pass beside the tracked window over the run's last tenth; a note where
    # they disagree beyond their error bars.
    noise, window = data["noise"], data["noise"]["window"]
    assert window["updates"] == data["reference"]["steps_to_target"]  # tracked at every step
    disagree = point_and_window_disagree(
        (noise["b_simple"], noise["b_simple_stderr"]), (window["b_simple"], window["b_simple_stderr"])
    )
    assert any(line.startswith("B_noise read") for line in data["limitations"]) == disagree
    # Every batch the prediction considered ran in the throughput profile, so memory was not probed:
    # the cap is the largest batch that ran there, a lower bound, and the report says why.
    ran = max(p["batch_size"] for p in data["throughput"]["points"] if p["step_seconds"] is not None)
    assert data["memory"]["trials"] == [] and data["max_batch_size_is_lower_bound"]
    assert data["max_batch_size"] == ran and data["memory_probed_to"] == fastest["batch_size"] <= ran
    page = (tmp_path / "report.html").read_text()
    # The profile stops at the knee, or earlier where no larger batch could be the advice: then it says
    # so, and names no knee unless its last doublings had stopped paying.
    if data["throughput"]["stopped_because"]:
        assert f"The profile {data['throughput']['stopped_because']}." in page
    else:
        assert data["knee_batch_size"] is not None
    assert f"Memory was not probed: the throughput profile ran whole training steps up to batch {ran}" in page
    plots = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', page)
    assert {"predicted time to target", "samples per second", "B_simple over training"} <= set(plots)
    assert (tmp_path / "advice.json").is_file() and (tmp_path / "results.db").is_file()


def test_report_is_self_contained_and_escapes_strings() -> None:
    """No external URL; names and metrics written by the user come out escaped."""
    hostile = '<script>alert("x")</script>&'
    sweep = {
        "workload": hostile,
        "lr_rule": "linear",
        "target": {"metric": f"eval_{hostile}", "value": 0.5, "mode": "min"},
        "runs": [
            {
                "batch_size": b,
                "lr": 0.1,
                "seed": 0,
                "steps_to_target": s,
                "seconds_to_target": 0.1,
                "final_train_loss": 0.4,
                "final_eval_loss": 0.5,
                "diverged": False,
                "curve": [
                    {"step": 1, "examples": b, "eval_loss": 1.0, "train_loss": 1.0},
                    {"step": s, "examples": b * s, "eval_loss": 0.5, "train_loss": 0.4},
                ],
            }
            for b, s in ((8, 400), (32, 120), (128, 60))
        ],
        "best": [
            {"batch_size": b, "lr": 0.1, "lr_multiplier": 1.0, "steps_to_target": s}
            for b, s in ((8, 400), (32, 120), (128, 60))
        ],
        "fit": {
            "ok": False,
            "reason": hostile,
            "points": 3,
            "s_min": None,
            "e_min": None,
            "b_crit": None,
            "b_crit_low": None,
            "b_crit_high": None,
        },
    }
    page = render_report(workload=hostile, sweep=sweep, target=sweep["target"])
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    without_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "data:image/png;base64," in page
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))
    assert not re.search(r"(https?:)?//|<link|@import|<script", without_images)


def test_lr_rule_follows_the_optimizer() -> None:
    """SGD gets the noise-aware rule; AdamW (charlm) the square-root rule."""
    lr, rule = lr_for(load_workload("digits-mlp"), 128, 100.0)
    assert rule.value == "noise" and lr == pytest.approx(0.05 * (1 + 100 / 32) / (1 + 100 / 128))
    lr, rule = lr_for(load_workload("charlm"), 128, 100.0)
    assert rule.value == "sqrt" and lr == pytest.approx(3e-3 * 2)


def _timed(step_seconds: dict[int, float]) -> ThroughputProfile:
    return ThroughputProfile(
        workload="w",
        device="cpu",
        knee_batch_size=None,
        knee_gain=0.1,
        warmup_steps=0,
        repeats=9,
        points=tuple(
            ThroughputPoint(
                batch_size=b,
                step_seconds=s,
                step_seconds_min=s,
                step_seconds_max=s,
                samples_per_second=b / s,
                steps_per_repeat=1,
            )
            for b, s in step_seconds.items()
        ),
    )


def test_prediction_minimum_matches_the_closed_form() -> None:
    """With step_seconds = t0 + c B and S = S_min (1 + Bn/B), T(B) is least at sqrt(Bn t0 / c)
    (science.md); the best candidate lies within one grid step of it."""
    t0, c, b_noise = 2e-3, 1e-5, 400.0
    sizes = [2**k for k in range(13)]
    profile = _timed({b: t0 + c * b for b in sizes})
    predictions = predict(
        load_workload("digits-mlp"), s_min=100.0, b_noise=b_noise, throughput=profile, cap=4096
    )
    best = min(predictions, key=lambda p: p.seconds_to_target)
    optimum = math.sqrt(b_noise * t0 / c)  # ~283
    assert optimum / 1.5 <= best.batch_size <= optimum * 1.5
    assert best.steps_to_target == pytest.approx(100 * (1 + b_noise / best.batch_size))


@pytest.mark.parametrize(("reference", "stops_at"), [(4, 64), (128, 128)])
def test_the_profile_stops_where_no_larger_batch_can_win(reference: int, stops_at: int) -> None:
    """Step time 10 ms + 1 ms x B, S_min 100, B_noise 8: the least predicted time is 3.6 s at batch 8
    (200 steps x 18 ms). S_min steps cost 4.2 s at 32 (under 1.5 x 3.6 = 5.4) and 7.4 s at 64 (over):
    the profile stops at 64, and never before the reference batch, whose prediction the speedup needs."""
    workload = dataclasses.replace(load_workload("digits-mlp"), batch_size=reference)
    stop = throughput_stop(workload, s_min=100.0, b_noise=8.0)
    points = [
        ThroughputPoint(
            batch_size=b,
            step_seconds=0.01 + 0.001 * b,
            step_seconds_min=0,
            step_seconds_max=0,
            samples_per_second=b / (0.01 + 0.001 * b),
            steps_per_repeat=1,
        )
        for b in [2**k for k in range(10)]
    ]
    reasons = [stop(points[: i + 1]) for i in range(len(points))]
    first = next(i for i, r in enumerate(reasons) if r)
    assert points[first].batch_size == stops_at
    assert f"timed up to batch {stops_at}" in (reasons[first] or "")
    assert "s at batch 8)" in (reasons[first] or "")


def test_candidates_include_reference_and_cap() -> None:
    assert candidate_sizes(100, 32) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 100]


def test_lr_doubling_needs_the_target_reached() -> None:
    """Two rates that both miss the target within the cap are not a gain: the search keeps the first."""
    runs = FakeRuns({(0.1, 0): 999, (0.1, 1): 999, (0.2, 0): 999, (0.2, 1): 999})
    tuned = tune_lr(runs, 64, 0.1, 50)
    lr, checks = tuned.lr, tuned.checks
    assert lr == 0.1
    assert sorted({lr for lr, _, _ in runs.tried}) == [0.1, 0.2]
    assert len(checks) == 2  # a seed that misses ends its rate's attempt: the slower seed decides


def test_a_doubling_stops_when_it_can_no_longer_win() -> None:
    """Rate 0.1 reaches the target in 100 steps on both seeds; the doubled rate must save 10% to be
    kept, so it is trained for at most 90 steps (88, the last evaluation point of an uncapped run
    before that), and missing there ends the search at 0.1."""
    runs = FakeRuns({(0.1, 0): 100, (0.1, 1): 100, (0.2, 0): 999, (0.2, 1): 999})
    tuned = tune_lr(runs, 64, 0.1, 160)
    lr, checks = tuned.lr, tuned.checks
    assert lr == 0.1
    assert runs.tried == [(0.1, 0, 160), (0.1, 1, 160), (0.2, 0, 88)]  # 90, down to the evaluation grid
    assert [(m.lr, m.steps_to_target) for m in checks] == [(0.1, 100), (0.1, 100), (0.2, None)]


class FakeRuns:
    """Runs to the target that take `outcome[(lr, seed)]` steps (None: diverged), or miss it when that
    is past their step limit; `tried` keeps the (lr, seed, limit) of each run, in order, and `on_run`
    is told each run's steps (a fake clock advances with it). A rate trained twice on one seed fails
    the test: the search never needs to (the same seed and rate train the same run)."""

    def __init__(
        self, outcome: dict[tuple[float, int], int | None], on_run: Callable[[float, int], None] | None = None
    ) -> None:
        self.outcome, self.on_run = outcome, on_run
        self.tried: list[tuple[float, int, int]] = []

    def to_target(self, batch_size: int, lr: float, seed: int, max_steps: int) -> Measured:
        assert (round(lr, 4), seed) not in [(r, s) for r, s, _ in self.tried], "a rate trained twice"
        self.tried.append((round(lr, 4), seed, max_steps))
        steps = self.outcome[(round(lr, 4), seed)]
        reached = None if steps is None or steps > max_steps else steps
        if self.on_run is not None:
            self.on_run(lr, reached or max_steps)
        return Measured(
            batch_size=batch_size,
            lr=lr,
            reached_target=reached is not None,
            steps_to_target=reached,
            seconds_to_target=None if reached is None else 0.01 * reached,
            diverged=steps is None,
        )


@pytest.mark.parametrize(
    ("seed1_at_top", "expected_lr", "expected_tail"),
    [
        (None, 0.2, [(0.4, 1, 160), (0.2, 1, 160)]),
        (70, 0.4, [(0.4, 1, 160), (0.2, 1, 76)]),
        (75, 0.2, [(0.4, 1, 160), (0.2, 1, 80)]),
    ],
)
def test_a_confirmed_search_starts_in_the_middle_and_checks_the_last_doubling_on_another_seed(
    seed1_at_top: int | None, expected_lr: float, expected_tail: list
) -> None:
    """With `confirm`, seed 0 alone searches, from the middle of the range (rule rate 0.1 x 2): 80
    steps at 0.2, then 0.4 within 90% of that (72), which it meets in 60. Seed 1 then trains at 0.4
    within the whole limit, and at 0.2 only until the doubling has surely paid (fewer than 70 / 0.9,
    so at most 76 steps, on the evaluation grid): diverging at 0.4 backs the search off to 0.2;
    0.4 in 70 keeps it, 0.2 taking 85; 0.4 in 75 (0.2 must beat 83.3) does not, 0.2 in 80 being
    within 10%. The rule rate 0.1, the slowest, is never trained; 0.8 misses within 54 (90% of 60)."""
    from batchlab.measure.lr_search import tune_lr

    outcome = {
        (0.2, 0): 80,
        (0.4, 0): 60,
        (0.8, 0): 999,
        (0.2, 1): 85 if seed1_at_top != 75 else 80,
        (0.4, 1): seed1_at_top,
    }
    runs = FakeRuns(outcome)
    tuned = tune_lr(runs, 64, 0.1, 160, confirm=True)
    lr, checks = tuned.lr, tuned.checks
    tried = runs.tried
    assert lr == expected_lr
    assert tried == [(0.2, 0, 160), (0.4, 0, 72), (0.8, 0, 54), *expected_tail]
    assert all(m.steps_to_target is not None for m in checks if m.lr == lr)


@pytest.mark.parametrize(("seed0_at_low", "expected_lr"), [(85, 0.1), (95, 0.2)])
def test_a_confirmed_search_halves_from_the_middle_while_the_doubling_does_not_pay(
    seed0_at_low: int, expected_lr: float
) -> None:
    """0.2 takes 80 steps, 0.4 misses within 72: the search halves to 0.1, which takes over only if
    it reaches the target in fewer than 80 / 0.9 steps (at most 88). In 85 it does, and the search
    halves on, below the rule's rate: 0.05 misses within 92 (fewer than 85 / 0.9), and seed 1
    checks the doubling from 0.05 to 0.1; in 95 it does not, and seed 1 checks the doubling from
    0.1 to 0.2."""
    from batchlab.measure.lr_search import tune_lr

    outcome = {
        (0.2, 0): 80,
        (0.4, 0): 75,
        (0.1, 0): seed0_at_low,
        (0.05, 0): 999,
        (0.1, 1): seed0_at_low,
        (0.05, 1): 999,
        (0.2, 1): 80,
    }
    runs = FakeRuns(outcome)
    tuned = tune_lr(runs, 64, 0.1, 160, confirm=True)
    tried = runs.tried
    assert tuned.lr == expected_lr
    if expected_lr == 0.1:
        assert tried == [
            (0.2, 0, 160),
            (0.4, 0, 72),
            (0.1, 0, 88),
            (0.05, 0, 92),
            (0.1, 1, 160),
            (0.05, 1, 92),
        ]
        assert tuned.stopped_because == "0.2 did not save 10% of the steps, and the doubling from 0.05 did"
    else:
        assert tried == [(0.2, 0, 160), (0.4, 0, 72), (0.1, 0, 88), (0.2, 1, 160), (0.1, 1, 88)]


@pytest.mark.parametrize(
    ("between", "expected_lr", "expected_tail"),
    [
        (None, 0.2, [(0.2, 1, 160)]),
        (95, 0.2, [(0.2, 1, 160)]),
        (80, 0.2828, [(0.2828, 1, 160), (0.2, 1, 88)]),
    ],
)
def test_after_a_halving_the_search_tries_the_rate_halfway_to_the_one_that_diverged(
    between: int | None, expected_lr: float, expected_tail: list
) -> None:
    """The search starts at 0.4 (rule rate 0.2 x 2), which diverges; 0.2 reaches the target in 100
    steps. Doubling 0.2 would train 0.4 again on the same seed (it can only lose), so it is not; the
    stability edge lies between, and 0.2 x sqrt 2 is tried within 90 steps (88 on the evaluation
    grid): diverging there, or missing (95), leaves 0.2, which seed 1 then checks alone; 80 keeps
    it, and seed 1 trains it, then 0.2 only until the step up has surely paid (fewer than 80 / 0.9,
    at most 88 steps)."""
    from batchlab.measure.lr_search import tune_lr

    outcome = {(0.4, 0): None, (0.2, 0): 100, (0.2828, 0): between, (0.2, 1): 100, (0.2828, 1): 80}
    runs = FakeRuns(outcome)
    lr = tune_lr(runs, 64, 0.2, 160, confirm=True).lr
    tried = runs.tried
    assert lr == pytest.approx(expected_lr, abs=1e-4)
    assert tried == [(0.4, 0, 160), (0.2, 0, 160), (0.2828, 0, 88), *expected_tail]


def test_the_search_doubles_past_4x_for_as_long_as_a_doubling_pays() -> None:
    """From twice the rule's rate (0.2, 200 steps) every doubling saves 10% of the steps on seed 0 up
    to 1.6 (150, 110, 90 steps), each run capped at 90% of the last one's steps on the evaluation
    grid, so each costs less than the one before (176, 128, 96, 80); 3.2 misses within 80 and ends
    the climb. Seed 1 reaches the target at 1.6, and 0.8 cannot beat it there by 10% (it misses
    within 104, fewer than 95 / 0.9): the answer is 16x the rule's rate, where a search bounded at
    4x stopped at 0.4."""
    outcome = {
        (0.2, 0): 200,
        (0.4, 0): 150,
        (0.8, 0): 110,
        (1.6, 0): 90,
        (3.2, 0): 85,
        (1.6, 1): 95,
        (0.8, 1): 120,
    }
    runs = FakeRuns(outcome)
    tuned = tune_lr(runs, 64, 0.1, 400, confirm=True)
    assert tuned.lr == pytest.approx(1.6)
    assert runs.tried == [
        (0.2, 0, 400),
        (0.4, 0, 176),
        (0.8, 0, 128),
        (1.6, 0, 96),
        (3.2, 0, 80),
        (1.6, 1, 400),
        (0.8, 1, 104),
    ]
    assert tuned.stopped_because == "3.2 did not reach the target in 10% fewer steps"
    assert [m.lr for m in tuned.checks] == [lr for lr, _, _ in runs.tried]


@pytest.mark.parametrize(
    ("seed1_halfway", "expected_lr", "expected_tail", "why"),
    [
        (
            75,
            0.5657,
            [(0.5657, 1, 160), (0.4, 1, 80)],
            "0.8 diverged, and the rate halfway to it saved 10% of the steps",
        ),
        (None, 0.4, [(0.5657, 1, 160), (0.4, 1, 160)], "0.566 missed the target on another seed"),
    ],
)
def test_a_climb_that_meets_divergence_backs_off_to_the_edge(
    seed1_halfway: int | None, expected_lr: float, expected_tail: list, why: str
) -> None:
    """0.2 (100 steps) doubles to 0.4 (80, within 88); 0.8 diverges. The stability edge lies between:
    0.4 x sqrt 2 is tried within 72 steps (90% of 80) and takes 70, so it is kept. On seed 1 it
    reaches the target in 75, and 0.4 cannot beat that by 10% (it misses within 80): the answer is
    the halfway rate. Where seed 1 diverges there, the search backs off to 0.4, which reaches the
    target on seed 1 (85) within the whole limit."""
    outcome = {(0.2, 0): 100, (0.4, 0): 80, (0.8, 0): None, (0.5657, 0): 70, (0.5657, 1): seed1_halfway}
    outcome[(0.4, 1)] = 90 if seed1_halfway is not None else 85
    runs = FakeRuns(outcome)
    tuned = tune_lr(runs, 64, 0.1, 160, confirm=True)
    assert tuned.lr == pytest.approx(expected_lr, abs=1e-4)
    assert runs.tried == [(0.2, 0, 160), (0.4, 0, 88), (0.8, 0, 72), (0.5657, 0, 72), *expected_tail]
    assert tuned.stopped_because == why


def test_a_search_whose_every_doubling_pays_stops_at_its_bound_and_says_so() -> None:
    """Each doubling from 0.001 takes 80% of the steps (on both seeds, the critical study's
    unconfirmed search): it climbs LR_MAX_DOUBLINGS times, to 1.024, and stops there, naming it."""
    from batchlab.measure.lr_search import LR_MAX_DOUBLINGS

    outcome = {(round(0.001 * 2**k, 4), seed): int(1000 * 0.8**k) for k in range(12) for seed in (0, 1)}
    runs = FakeRuns(outcome)
    tuned = tune_lr(runs, 64, 0.001, 2000)
    assert tuned.lr == pytest.approx(0.001 * 2**LR_MAX_DOUBLINGS)
    assert len(runs.tried) == 2 * (LR_MAX_DOUBLINGS + 1)
    assert tuned.stopped_because == f"it had moved {2**LR_MAX_DOUBLINGS}x, its bound"


@pytest.mark.parametrize(
    ("rule", "start", "lr", "why", "line"),
    [
        (
            LrRule.SQRT,
            0.1,
            1.6,
            "3.2 did not reach the target in 10% fewer steps",
            "Learning rate 1.6: 16x the rule's rate (0.1). Trained to the target at batch 512, a rate is "
            "kept only where it saves 10% of the steps; the search stopped because 3.2 did not reach "
            "the target in 10% fewer steps.",
        ),
        (
            LrRule.NONE,
            0.05,
            0.05,
            "0.1 diverged",
            "Learning rate 0.05: kept the reference rate (0.05). Trained to the target at batch 512, a "
            "rate is kept only where it saves 10% of the steps; the search stopped because 0.1 diverged.",
        ),
        (LrRule.NONE, 0.05, 0.05, None, "Learning rate 0.05: the reference rate, not searched."),
    ],
)
def test_the_rationale_says_how_far_the_search_moved_the_rate_and_why_it_stopped(
    rule: LrRule, start: float, lr: float, why: str | None, line: str
) -> None:
    from batchlab.advise.rationale import search_line

    assert search_line(512, rule, start, lr, why) == line


def test_at_the_reference_batch_the_search_starts_from_the_reference_run() -> None:
    """The reference run (lr 0.1, seed 0, 100 steps) is not trained again. Doubling it must reach
    the target within 90 steps (it takes 95: no); then halving goes on while the lower rate reaches
    it in fewer than steps / 0.9: 0.05 in 85 (< 111.1), 0.025 in 80 (< 94.4), as far as two
    0.0125 in 999 does not (each cap on the evaluation grid: 88, 108, 92, 88); seed 1 confirms
    0.025 within the whole limit, and 0.0125 misses there too within fewer than 82 / 0.9 (88)."""
    from batchlab.measure.lr_search import Measured, tune_lr

    reference = Measured(
        batch_size=64, lr=0.1, reached_target=True, steps_to_target=100, seconds_to_target=1.0, diverged=False
    )
    outcome = {
        (0.2, 0): 95,
        (0.05, 0): 85,
        (0.025, 0): 80,
        (0.0125, 0): 999,
        (0.025, 1): 82,
        (0.0125, 1): 999,
    }
    runs = FakeRuns(outcome)
    tuned = tune_lr(runs, 64, 0.1, 160, confirm=True, first=reference)
    lr, checks = tuned.lr, tuned.checks
    tried = runs.tried
    assert lr == 0.025
    assert tried == [
        (0.2, 0, 88),
        (0.05, 0, 108),
        (0.025, 0, 92),
        (0.0125, 0, 88),
        (0.025, 1, 160),
        (0.0125, 1, 88),
    ]
    assert checks[0] is reference


def _digits_mlp_reference():  # type: ignore[no-untyped-def]
    """digits-mlp's reference point (batch 32 at lr 0.05): its run (seed 0, 100 steps) and its
    prediction (100 steps of 10 ms)."""
    from batchlab.advise.result import Prediction
    from batchlab.measure.lr_search import Measured

    reference = Measured(
        batch_size=32,
        lr=0.05,
        reached_target=True,
        steps_to_target=100,
        seconds_to_target=1.0,
        diverged=False,
    )
    best = Prediction(batch_size=32, lr=0.05, steps_to_target=100, step_seconds=0.01, seconds_to_target=1.0)
    return load_workload("digits-mlp"), reference, best


def test_at_the_reference_batch_a_rate_that_misses_on_a_seed_is_not_advice() -> None:
    """From the reference run (0.05, 100 steps): 0.1 misses within 90, 0.025 takes over (85), 0.0125 misses
    within 94 (caps on the evaluation grid: 88, 108, 92). Each run may take twice the reference's steps
    (200). Seed 1 diverges at 0.025 and misses at 0.0125: no rate but the reference's has reached the
    target on both seeds, so the advice keeps the reference rate, and says why."""
    from batchlab.advise.budget import Budget
    from batchlab.advise.choice import tune_reference_rate

    workload, reference, best = _digits_mlp_reference()
    outcome = {(0.1, 0): 95, (0.025, 0): 85, (0.0125, 0): 100, (0.025, 1): None, (0.0125, 1): 300}
    runs = FakeRuns(outcome)
    limitations: list[str] = []
    lr, checks, _ = tune_reference_rate(workload, best, reference, runs, Budget(None), limitations, print)
    tried = runs.tried
    assert lr == 0.05
    assert tried == [(0.1, 0, 88), (0.025, 0, 108), (0.0125, 0, 92), (0.025, 1, 200), (0.0125, 1, 200)]
    assert [m.lr for m in checks] == [0.1, 0.025, 0.0125, 0.025, 0.0125]
    assert limitations[-1] == (
        "at batch 32 no rate but the reference's reached the target on every seed: "
        "the reference rate 0.05 is kept"
    )


def test_a_rate_tuned_at_the_reference_batch_is_compared_with_the_reference_on_two_seeds() -> None:
    """From the reference run (0.05, 100 steps): 0.025 takes over (85 < 108), 0.0125 misses within 92;
    seed 1 reaches at 0.025 (90) and 0.0125 cannot take over there (300): the answer is 0.025. The
    reference rate then trains on seed 1 too (140 steps), and the speedup compares the means of two
    seeds each: (100 + 140) / 2 = 120 reference steps against (85 + 90) / 2 = 87.5, both at 10 ms."""
    from batchlab.advise.budget import Budget
    from batchlab.advise.choice import tune_reference_rate
    from batchlab.advise.model import forecast_speedup
    from batchlab.train.evaluation import last_eval_at

    workload, reference, best = _digits_mlp_reference()
    outcome = {
        (0.1, 0): 95,
        (0.025, 0): 85,
        (0.0125, 0): 100,
        (0.025, 1): 90,
        (0.0125, 1): 300,
        (0.05, 1): 140,
    }
    runs = FakeRuns(outcome)
    lr, checks, _ = tune_reference_rate(workload, best, reference, runs, Budget(None), [], print)
    tried = runs.tried
    assert lr == 0.025
    assert tried == [
        (0.1, 0, 88),
        (0.025, 0, 108),
        (0.0125, 0, 92),
        (0.025, 1, 200),
        (0.0125, 1, last_eval_at(99)),
        (0.05, 1, 200),
    ]
    forecast = forecast_speedup(best, checks, lr, best, workload)
    assert forecast.steps == pytest.approx(87.5) and forecast.seconds == pytest.approx(0.875)
    assert forecast.reference_steps == (100, 140)  # the reference run and the reference rate's seed 1
    assert forecast.speedup == pytest.approx(120 / 87.5)


def test_tuning_runs_stop_where_the_reference_is_faster() -> None:
    """100 predicted steps of 10 ms: a tuning run may take 200 steps, or only the 80 that the
    reference's 0.8 s buys; never fewer than LR_CHECK_STEPS."""
    from batchlab.advise.model import LR_CHECK_STEPS, tuning_steps
    from batchlab.advise.result import Prediction

    def at(b: int, steps: float, step_seconds: float) -> Prediction:
        return Prediction(
            batch_size=b,
            lr=0.1,
            steps_to_target=steps,
            step_seconds=step_seconds,
            seconds_to_target=steps * step_seconds,
        )

    best = at(64, 100, 0.01)
    assert tuning_steps(best, None) == 200
    assert tuning_steps(best, at(32, 400, 0.002)) == 80
    assert tuning_steps(best, at(32, 10, 0.001)) == LR_CHECK_STEPS


@pytest.mark.parametrize(
    ("rule", "lr", "words"),
    [
        ("sqrt", 0.02, "sqrt rule"),
        ("sqrt", 0.08, "sqrt rule, tuned: 4x"),
        ("linear", 0.01, "linear rule, tuned: 0.5x"),
        ("none", 0.05, "the reference rate"),
        ("none", 0.0125, "the reference rate, tuned"),
    ],
)
def test_the_advice_says_where_its_rate_came_from(rule: str, lr: float, words: str) -> None:
    """The rule's rate here is 0.02; a rate tuned away from it says by how much."""
    from batchlab.lr import rate_source

    advice = {"lr_rule": rule, "lr": lr, "lr_from_rule": 0.02, "reference": {"lr": 0.05}}
    assert rate_source(advice) == words


def _spread_profile(spread: float, repeats: int = 5) -> ThroughputProfile:
    """Step times of 1 ms at 128, 256 and 512, each repeat between 1 - spread and 1 + spread ms."""
    return ThroughputProfile(
        workload="w",
        device="cpu",
        knee_batch_size=None,
        knee_gain=0.1,
        warmup_steps=0,
        repeats=repeats,
        points=tuple(
            ThroughputPoint(
                batch_size=b,
                step_seconds=1e-3,
                step_seconds_min=1e-3 * (1 - spread),
                step_seconds_max=1e-3 * (1 + spread),
                samples_per_second=b / 1e-3,
                steps_per_repeat=1,
            )
            for b in (128, 256, 512)
        ),
    )


def _at(b: int, seconds: float) -> Prediction:
    return Prediction(
        batch_size=b, lr=0.1, steps_to_target=seconds / 1e-3, step_seconds=1e-3, seconds_to_target=seconds
    )


def test_a_step_times_standard_error_comes_from_its_repeats_spread() -> None:
    """Five repeats from 0.9 to 1.1 ms: sigma = 0.2 / d2(5) = 0.2 / 2.326 = 0.0860 ms, and the median
    errs by 1.2533 x 0.0860 / sqrt(5) = 0.0482 ms, 4.82%. Between measured batches (192), the larger
    of its neighbours'; one repeat has no spread to read."""
    from batchlab.advise.model import step_time_stderr

    assert step_time_stderr(_spread_profile(0.1), 256) == pytest.approx(0.04819, abs=1e-5)
    assert step_time_stderr(_spread_profile(0.1), 192) == pytest.approx(0.04819, abs=1e-5)
    assert step_time_stderr(_spread_profile(0.1, repeats=1), 256) == 0.0


@pytest.mark.parametrize(
    ("spread", "at_128", "chosen", "flat"),
    [
        # 512 is fastest (0.92 s), 0.9643 s at its pessimistic end (+4.82%); 256 (0.95 s) and 128
        # (1.00 s) are within that at their optimistic ends (0.9042, 0.9518 s): 128 is chosen.
        (0.1, 1.00, 128, (128, 256, 512)),
        # 128 at 1.02 s: 0.9708 s at best, past 0.9643: out, and 256 is the smallest left.
        (0.1, 1.02, 256, (256, 512)),
        # Timing without spread: the fastest alone, no flat optimum.
        (0.0, 1.00, 512, ()),
        # A spread of 60% puts all three within the noise, but no more than 10% slower than the
        # fastest can be chosen (1.012 s): 128 at 1.05 s is out.
        (0.6, 1.05, 256, (256, 512)),
    ],
)
def test_a_flat_optimum_chooses_its_smallest_batch(
    spread: float, at_128: float, chosen: int, flat: tuple[int, ...]
) -> None:
    from batchlab.advise.model import flat_choice

    predictions = [_at(128, at_128), _at(256, 0.95), _at(512, 0.92)]
    best, band = flat_choice(predictions, _spread_profile(spread))
    assert best.batch_size == chosen
    assert tuple(p.batch_size for p in band) == flat


def test_with_a_memory_limit_the_advice_probes_up_to_what_it_could_choose() -> None:
    """A limit below the device's is not something the throughput profile has shown: the probe runs
    in its child processes, bounded by the largest batch the prediction could choose (linreg's
    best is far below its 8,192 examples, and 1 GiB holds all of them)."""
    advice = batchlab.advise("linreg", memory_limit=2**30)
    assert advice.memory["trials"] and advice.memory_probed_to is not None
    unbounded = min(advice.predictions, key=lambda p: p.seconds_to_target)
    assert advice.memory_probed_to == unbounded.batch_size < 8192
    assert max(t["batch_size"] for t in advice.memory["trials"]) == advice.memory_probed_to
    assert advice.max_batch_size == advice.memory_probed_to and advice.max_batch_size_is_lower_bound


@pytest.mark.parametrize(
    ("point", "window", "disagree"),
    [
        ((18.5, 0.7), (34.2, 2.0), True),  # charlm's reference run: 15.7 apart, 3 sigma = 6.4
        ((160.0, 10.0), (152.0, 71.0), False),  # digits-mlp's: 8 apart, 3 sigma = 215
        ((10.0, 1.0), (14.0, 1.0), False),  # 4 apart, 3 sigma = 4.24
        ((10.0, 1.0), (14.5, 1.0), True),  # 4.5 apart
        ((10.0, 1.0), (math.inf, 1.0), False),  # not finite: nothing to compare
    ],
)
def test_point_and_window_disagree_beyond_three_combined_standard_errors(
    point: tuple[float, float], window: tuple[float, float], disagree: bool
) -> None:
    assert point_and_window_disagree(point, window) is disagree


@pytest.mark.parametrize(
    ("spent", "left", "tried", "said"),
    [
        # The reference's 100 steps at 10 ms: a second seed costs 1 s. The advice may spend 5 such
        # runs + 10 s = 15 s: at 13.9 s spent the seed fits (14.9 s), at 14.1 s it does not.
        (13.9, None, [(0.05, 1, 200)], None),
        (14.1, None, [], "a second seed (about 1 s of training) would take the advice past 5 reference runs"),
        # A budget the caller set with less than the run's second left: not started.
        (0.0, 0.9, [], "a second seed (about 1 s of training)"),
    ],
)
def test_the_reference_trains_on_a_second_seed_where_the_advice_can_afford_it(
    spent: float, left: float | None, tried: list, said: str | None
) -> None:
    """Seed 1 of the reference point joins the speedup's reference steps only within the advice's cost
    in proportion to one reference run (REFERENCE_RUNS runs + EXTRA_SECONDS); else the limitation
    says the speedup rests on one seed."""
    from batchlab.advise.budget import Budget
    from batchlab.advise.evidence import reference_seed
    from batchlab.advise.model import forecast_speedup

    workload, reference, best = _digits_mlp_reference()
    fake = FakeRuns({(0.05, 1): 140})
    budget = Budget(None if left is None else left + spent)
    budget.start -= spent
    limitations: list[str] = []
    timing = _timed({256: 0.02, 32: 0.01})
    checks = reference_seed(workload, reference, [], timing, fake, budget, limitations, print)
    assert fake.tried == tried
    assert [m.steps_to_target for m in checks] == ([140] if tried else [])
    assert (said is None) == (not limitations) and all(said in line for line in limitations)
    # The speedup: the mean of the seeds' steps at the timed step, over the chosen batch's 30 steps of 20 ms.
    chosen = Prediction(batch_size=256, lr=0.2, steps_to_target=30, step_seconds=0.03, seconds_to_target=0.9)
    forecast = forecast_speedup(chosen, checks, 0.2, best, workload, timing)
    assert forecast.reference_steps == ((100, 140) if tried else (100,))
    assert forecast.speedup == pytest.approx((120 if tried else 100) * 0.01 / (30 * 0.02))
    if tried:  # the reference point has its seed 1 now: asked again, nothing more is trained
        assert reference_seed(workload, reference, checks, timing, fake, Budget(None), [], print) == []
        assert fake.tried == tried


def test_forecast_says_what_the_speedup_rests_on() -> None:
    """The rationale's speedup line names the reference's steps, their step time and their seeds."""
    from batchlab.advise.model import Forecast
    from batchlab.advise.rationale import forecast_lines

    workload = _digits_mlp_reference()[0]
    chosen = Prediction(batch_size=256, lr=0.2, steps_to_target=30, step_seconds=0.03, seconds_to_target=0.9)
    two = Forecast(24, 0.02, (100, 140), 0.01, (20, 28))
    assert two.speedup_range == pytest.approx((100 * 0.01 / (28 * 0.02), 140 * 0.01 / (20 * 0.02)))
    assert forecast_lines(workload, chosen, two) == [
        "Tuning runs trained to the target at batch 256 in 24 steps (the mean of its seeds), so the "
        "prediction is 0.48 s (its steps timed again beside the reference's).",
        "That is 2.50x faster than the reference batch 32 (predicted: 120 steps at 10 ms, the mean of "
        "2 seeds' 100 and 140).",
        "Its seeds alone move it between 1.79x and 3.50x (each point's slowest seed against the other's "
        "fastest).",
    ]
    # One seed at the chosen point (the model's steps, or one tuning run): the reference's seeds alone.
    assert Forecast(24, 0.02, (100, 140), 0.01).speedup_range == pytest.approx((100 / 48, 140 / 48))
    assert Forecast(24, 0.02, (100,), 0.01, (24,)).speedup_range is None
    one = forecast_lines(workload, chosen, Forecast(30, 0.02, (100,), 0.01))
    assert one == [
        "That is 1.67x faster than the reference batch 32 (predicted: 100 steps at 10 ms, one seed's)."
    ]


@pytest.mark.parametrize(
    ("spent", "tried"),
    [
        # The advice may spend 5 reference runs (100 steps of 10 ms) + 10 s = 15 s. At 12.5 s: seed 2 at
        # the chosen point (the mean of 30 and 40 steps, of 20 ms: 0.7 s; it takes 50, to 13.5 s), then at
        # the reference (the mean of 100 and 140: 1.2 s, under 1.35; it takes 90, to 14.4 s); seed 3
        # would pass 15 s at either (0.8 s, 1.1 s).
        (12.5, [(0.2, 2, 70), (0.05, 2, 240)]),
        # At 10 s: seed 2 at the chosen point (0.7 s, to 11 s), not at the reference (1.2 s > 1.1 s);
        # seed 3 at the chosen point (the mean of 30, 40, 50: 0.8 s), not at the reference, whose
        # seed 2 is missing.
        (10.0, [(0.2, 2, 70), (0.2, 3, 80)]),
        # Under 7 s spent, no run costs a tenth of it or less: none.
        (6.9, []),
    ],
)
def test_cheap_seeds_join_both_points_where_each_costs_a_tenth_of_the_advice(
    spent: float, tried: list
) -> None:
    """Seeds 2 and 3 at the chosen point and at the reference, each only at most CHEAP_SHARE of the
    advice's cost so far and within the cost proportion; their steps join the speedup's means."""
    from batchlab.advise.budget import Budget
    from batchlab.advise.evidence import cheap_seeds

    workload, reference, _ = _digits_mlp_reference()
    outcome = {(0.2, 2): 50, (0.05, 2): 90, (0.2, 3): 45, (0.05, 3): 100}
    clock = {"now": 1000.0 + spent}
    run_seconds = {0.2: 0.02, 0.05: 0.01}  # a faked run advances the clock by its steps x step time

    def advance(lr: float, steps: int) -> None:
        clock["now"] += steps * run_seconds[round(lr, 4)]

    runs = FakeRuns(outcome, on_run=advance)
    budget = Budget(None, clock=lambda: clock["now"])
    budget.start = 1000.0
    checks = [
        dataclasses.replace(reference, batch_size=256, lr=0.2, steps_to_target=30),
        dataclasses.replace(reference, batch_size=256, lr=0.2, steps_to_target=40),
        dataclasses.replace(reference, lr=0.05, steps_to_target=140),
    ]
    timing = _timed({256: 0.02, 32: 0.01})
    added = cheap_seeds(workload, (256, 0.2), reference, checks, timing, runs, budget, print)
    assert runs.tried == tried
    assert [m.steps_to_target for m in added] == [outcome[(lr, seed)] for lr, seed, _ in tried]


def test_retimed_predictions_keep_their_steps_on_the_new_step_times() -> None:
    """The contenders' predictions (all on 1 ms steps) on their side-by-side step times, 2 ms at 128
    and 4 ms at 256: the steps stay; 192 interpolates (3 ms), 512 extrapolates along the last
    segment (8 ms)."""
    from batchlab.advise.model import retimed

    predictions = [_at(128, 0.5), _at(192, 0.6), _at(512, 0.9)]
    out = retimed(predictions, _timed({128: 2e-3, 256: 4e-3}))
    assert [(p.batch_size, p.steps_to_target) for p in out] == [(128, 500), (192, 600), (512, 900)]
    assert [p.step_seconds for p in out] == pytest.approx([2e-3, 3e-3, 8e-3])
    assert [p.seconds_to_target for p in out] == pytest.approx([1.0, 1.8, 7.2])
