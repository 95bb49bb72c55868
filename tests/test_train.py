"""The training loop: accumulation, learning-rate rules, determinism, divergence, targets."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import pytest
import torch
from torch.utils.data import Dataset

from batchlab import ConfigError, LrRule, load_workload, scale_lr, train
from batchlab.core.data import DeviceData
from batchlab.core.step import backward
from batchlab.lr import warmup_factor
from batchlab.train.evaluation import DIVERGENCE_FACTOR, auto_check, auto_eval, evaluate, last_eval_at
from batchlab.train.model import fresh_model


def _grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])  # type: ignore[union-attr]


def test_accumulation_gives_the_batch_gradient() -> None:
    """4 micro-batches of 8 accumulate to the gradient of one batch of 32 (float tolerance)."""
    workload = load_workload("digits-mlp")
    x, y = workload.train_data[:32]
    grads = []
    for parts in (1, 4):
        model = fresh_model(workload, seed=0, device=torch.device("cpu"))
        backward(model, workload.loss, (x, y), micro_batches=parts)
        grads.append(_grads(model))
    scale = grads[0].abs().max().item()
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-6 * scale)


def test_accumulated_training_matches_whole_batches() -> None:
    """Training 20 steps with accumulation 4 ends at the same parameters as without."""
    results = [
        train("digits-mlp", batch_size=32, accumulation=k, max_steps=20, keep_model=True, device="cpu")
        for k in (1, 4)
    ]
    assert results[1].micro_batch_size == 8
    params = [torch.cat([p.detach().reshape(-1) for p in r.model.parameters()]) for r in results]  # type: ignore[union-attr]
    assert torch.allclose(params[0], params[1], atol=1e-5)


def test_accumulation_must_divide_the_batch() -> None:
    """A batch that does not split evenly is refused with the fix."""
    with pytest.raises(ConfigError, match="accumulation must be a divisor of the batch size 30"):
        train("digits-mlp", batch_size=30, accumulation=4, max_steps=1)


@pytest.mark.parametrize(
    ("rule", "batch", "expected"),
    [
        (LrRule.NONE, 128, 0.1),
        (LrRule.LINEAR, 128, 0.4),
        (LrRule.LINEAR, 8, 0.025),
        (LrRule.SQRT, 128, 0.2),
        (LrRule.SQRT, 8, 0.05),
        # noise-aware with B_noise = 32: 0.1 * (1 + 1) / (1 + 32/128) = 0.16
        (LrRule.NOISE, 128, 0.16),
        (LrRule.NOISE, 32, 0.1),
    ],
)
def test_lr_rules(rule: LrRule, batch: int, expected: float) -> None:
    """Each rule scales the reference (batch 32, lr 0.1) as its formula says."""
    got = scale_lr(rule, lr_ref=0.1, batch_ref=32, batch_size=batch, b_noise=32.0)
    assert got == pytest.approx(expected, rel=1e-12)


def test_noise_rule_is_linear_below_and_flat_above_the_noise_scale() -> None:
    """lr(B) tends to lr_ref*(1 + Bn/Bref)*B/Bn for B << Bn, and to lr_ref*(1 + Bn/Bref) for B >> Bn."""
    lr_max = 0.1 * (1 + 1000 / 32)
    assert scale_lr("noise", lr_ref=0.1, batch_ref=32, batch_size=10**7, b_noise=1000) == pytest.approx(
        lr_max, rel=1e-3
    )
    assert scale_lr("noise", lr_ref=0.1, batch_ref=32, batch_size=1, b_noise=1000) == pytest.approx(
        lr_max / 1000, rel=1e-2
    )


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ConfigError, match="lr_rule must be one of none, linear, sqrt, noise"):
        scale_lr("cubic", lr_ref=0.1, batch_ref=32, batch_size=64)


def test_warmup_ramps_linearly_then_holds() -> None:
    """Warm-up over 4 steps takes 1/4, 2/4, 3/4 of the rate, then all of it; a point shows its step's rate."""
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    result = train("linreg", batch_size=32, lr=0.08, warmup_steps=4, max_steps=6, eval_every=1, device="cpu")
    assert [round(p.lr, 6) for p in result.curve[1:]] == [0.02, 0.04, 0.06, 0.08, 0.08, 0.08]


def test_the_rule_sets_the_lr_used() -> None:
    """Without --lr, the linear rule doubles the reference rate at double the batch."""
    result = train("digits-mlp", batch_size=64, lr_rule="linear", max_steps=1, device="cpu")
    assert result.lr == pytest.approx(0.1)


def test_same_seed_same_curve() -> None:
    """Two runs with one seed give identical losses; another seed gives different ones."""
    runs = [train("digits-cnn", batch_size=32, max_steps=30, seed=s, device="cpu") for s in (3, 3, 4)]
    losses = [[(p.train_loss, p.eval_loss) for p in r.curve] for r in runs]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


class _PlainDataset(Dataset):  # type: ignore[type-arg]
    """A map-style dataset that is not a TensorDataset, so batches go through a DataLoader."""

    def __init__(self, inner: Dataset) -> None:  # type: ignore[type-arg]
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        return self.inner[i]


def test_dataloader_path_trains_like_the_fast_path() -> None:
    """A generic Dataset sees the same seeded order as the tensor fast path: the same curve."""
    import dataclasses

    fast = load_workload("digits-mlp")
    slow = dataclasses.replace(
        fast, train_data=_PlainDataset(fast.train_data), eval_data=_PlainDataset(fast.eval_data)
    )
    assert DeviceData(slow.train_data, torch.device("cpu")).tensors is None
    curves = [train(w, batch_size=32, max_steps=60, device="cpu").curve for w in (fast, slow)]
    for a, b in zip(*curves, strict=True):
        assert a.eval_loss == pytest.approx(b.eval_loss, rel=1e-5)


def test_huge_lr_diverges_as_a_result() -> None:
    """A learning rate of 1e4 on linreg ends the run with diverged=True, not an exception, at the
    first point whose training-sample loss passes 3x its start (each step multiplies it ~1e8)."""
    result = train("linreg", batch_size=32, lr=1e4, max_steps=500, device="cpu")
    assert result.diverged and not result.reached_target
    assert result.steps == 1
    start, last = result.curve[0].train_loss, result.curve[-1].train_loss
    assert start is not None and last is not None and last > DIVERGENCE_FACTOR * start
    json.dumps(result.to_dict(), allow_nan=False)  # plain JSON even so


def test_a_loss_that_triples_ends_the_run_as_diverged() -> None:
    """A rate just past SGD's stability limit grows the loss by a finite factor a step (about 1.5x
    at lr 1.5 on linreg, batch 32): the run ends as diverged a few steps in, once the
    training-sample loss passes 3x its start, not after 2,000 steps of a loss that never overflows."""
    result = train("linreg", batch_size=32, lr=1.5, max_steps=2000, device="cpu")
    assert result.diverged
    assert 1 < result.steps < 10
    losses = [p.train_loss for p in result.curve]
    assert all(v is not None and math.isfinite(v) for v in losses)
    assert losses[-1] > DIVERGENCE_FACTOR * losses[0] >= max(losses[:-1])  # type: ignore[operator]


def test_reaches_target_and_reports_where() -> None:
    """Until-target stops at the first evaluation that reaches the target, and records it."""
    result = train("digits-mlp", batch_size=32, until_target=True, device="cpu")
    assert result.reached_target
    hit = result.curve[-1]
    assert hit.eval_loss is not None and hit.eval_loss <= 0.15
    assert result.steps_to_target == hit.step == result.steps
    assert result.examples_to_target == 32 * hit.step
    assert all(p.eval_loss is not None and p.eval_loss > 0.15 for p in result.curve[:-1])


def test_a_capped_run_ends_on_the_evaluation_grid() -> None:
    """`last_eval_at(n)` is the last automatic evaluation point at or before n: a tuning run capped
    there is scored exactly where an uncapped run would be (746 -> 736, the points there being 32
    apart), so a cap is never an extra evaluation that lets the capped run count earlier."""
    points = [s for s in range(1, 5001) if auto_eval(s)]
    for n in range(5001):
        assert last_eval_at(n) == max((s for s in points if s <= n), default=0)
    assert last_eval_at(746) == 736


def test_auto_eval_resolution() -> None:
    """The automatic schedule evaluates every step up to 32, and from step 16 keeps gaps <= step/16."""
    steps = [s for s in range(1, 5000) if auto_eval(s)]
    assert steps[:32] == list(range(1, 33))
    gaps = [(b - a) / b for a, b in itertools.pairwise(steps) if b >= 16]
    assert max(gaps) <= 1 / 16
    assert len(steps) < 32 + 16 * math.log2(5000 / 32) + 2


def test_a_run_to_the_target_scores_checks_then_the_kept_points_before_the_first_that_meets_it() -> None:
    """linreg at lr 0.08: the evaluation loss dips below the target at step 34, is back above it at
    the check at 40, and stays below from 42. The same run for its curve (every point scored, the
    same trajectory step for step on the CPU) is the ground truth: the run to the target scores only
    the checks up to the first that meets it, then the kept points since the check before, in order;
    the first of them to meet it is the target point, with the same losses, and the run is left there
    (its model and its noise reading are those at that step)."""
    full = train(
        "linreg", batch_size=32, lr=0.08, max_steps=64, track_noise=True, noise_every=1, device="cpu"
    )
    run = train(
        "linreg",
        batch_size=32,
        lr=0.08,
        until_target=True,
        keep_model=True,
        track_noise=True,
        noise_every=1,
        device="cpu",
    )
    target = load_workload("linreg").target
    met = [p for p in full.curve if p.eval_loss is not None and target.reached(p.eval_loss)]
    first_check = next(p for p in met if auto_check(p.step))
    checks = [p.step for p in full.curve if auto_check(p.step) and 0 < p.step < first_check.step]
    expected = next(p for p in met if p.step > checks[-1])
    assert met[0].step < expected.step  # the dip between two checks that miss is not counted
    assert run.steps_to_target == run.steps == expected.step
    assert replace(run.curve[-1], seconds=0) == replace(expected, seconds=0)  # losses, noise and all
    kept = [p.step for p in full.curve if checks[-1] < p.step <= expected.step]
    assert [p.step for p in run.curve] == [0, *checks, *kept]
    assert run.noise is not None and run.noise["updates"] == run.steps  # the reading there, too
    assert run.noise["b_simple"] == run.curve[-1].b_simple
    assert run.model is not None
    eval_loss, _ = evaluate(
        run.model,
        load_workload("linreg"),
        DeviceData(load_workload("linreg").eval_data, torch.device("cpu")),
        batch_size=256,
    )
    assert eval_loss == pytest.approx(expected.eval_loss, rel=1e-6)


def test_a_run_with_a_budget_scores_every_point_and_finds_the_first_dip() -> None:
    """Without `until_target` the curve is the product: every automatic point is scored, and the
    target point is the first that meets it."""
    full = train("linreg", batch_size=32, lr=0.08, max_steps=64, device="cpu")
    assert [p.step for p in full.curve] == [0, *(s for s in range(1, 65) if auto_eval(s))]
    target = load_workload("linreg").target
    assert full.steps_to_target == next(
        p.step for p in full.curve if p.eval_loss is not None and target.reached(p.eval_loss)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1 (got 0)"),
        ({"batch_size": -1}, "batch_size must be an integer >= 1 (got -1)"),
        ({"batch_size": 1439}, "batch_size must be at most the training set's size, 1438 (got 1439)"),
        ({"batch_size": 32, "lr": 0.0}, "lr must be a finite number > 0 and <= 1e+30 (got 0.0)"),
        ({"batch_size": 32, "max_steps": 0}, "max_steps must be an integer >= 1 (got 0)"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        train("digits-mlp", **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_the_divergence_sample_is_no_larger_than_the_evaluation_set() -> None:
    """With an eval target, the train curve is scored on a fixed training sample of
    min(DIVERGENCE_SAMPLE, evaluation examples), never below DIVERGENCE_MIN; `final_gap=False`
    leaves the final train loss unmeasured. Checked against the loss scored directly on each sample."""
    from batchlab.train.evaluation import DIVERGENCE_MIN, DIVERGENCE_SAMPLE, SAMPLE_SEED

    base = load_workload("digits-mlp")
    assert base.target.metric.startswith("eval_")
    x, y = base.eval_data.tensors  # type: ignore[attr-defined]
    cpu = torch.device("cpu")
    untrained = fresh_model(base, seed=0, device=cpu)
    train_data = DeviceData(base.train_data, cpu)

    def sample_loss(size: int) -> float:
        return evaluate(untrained, base, train_data.sample(size, SAMPLE_SEED), batch_size=256)[0]

    cases = [(len(x), DIVERGENCE_SAMPLE), (100, 100), (10, DIVERGENCE_MIN)]
    for eval_size, expected in cases:
        workload = replace(base, eval_data=torch.utils.data.TensorDataset(x[:eval_size], y[:eval_size]))
        run = train(workload, batch_size=32, max_steps=1, eval_every=1, final_gap=False, device=cpu)
        start = run.curve[0]
        assert start.step == 0 and start.train_loss is not None
        assert math.isclose(start.train_loss, sample_loss(expected), rel_tol=1e-6)
        others = {DIVERGENCE_SAMPLE, 100, DIVERGENCE_MIN} - {expected}
        assert all(abs(start.train_loss - sample_loss(n)) > 1e-4 for n in others)
        assert run.final_train_loss is None
    assert train(base, batch_size=32, max_steps=1, device=cpu).final_train_loss is not None


class _EvalOutgrowsTraining(torch.nn.Module):
    """A batch-norm MLP whose forward in eval mode "runs out of CUDA memory" past `fits` examples
    (what a language model's logits do at an evaluation chunk of 256 where training at 12 fits);
    it records every eval chunk it was given."""

    def __init__(self, fits: int | None) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        )
        self.fits, self.chunks = fits, []  # type: list[int]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.chunks.append(len(x))
            if self.fits is not None and len(x) > self.fits:
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(x)} rows")
        return self.net(x)


def test_an_evaluation_chunk_that_runs_out_of_memory_is_halved_and_the_run_is_unchanged() -> None:
    """Training at batch 8 fits; scoring the data in chunks of 256 does not, past 64 rows. The run
    halves the chunk (256, 128, then 64, the first that fits), keeps 64 for every later evaluation,
    and trains exactly as a run whose chunks all fit: the same curve to float rounding (a mean over
    other chunks), so the model went back to train mode after the chunk that failed (batch norm
    trains on batch statistics; left in eval mode the curves would part)."""
    base = load_workload("digits-mlp")
    models: dict[str, _EvalOutgrowsTraining] = {}

    def workload(name: str, fits: int | None):  # type: ignore[no-untyped-def]
        def model() -> _EvalOutgrowsTraining:
            models[name] = _EvalOutgrowsTraining(fits)
            return models[name]

        return replace(base, name=name, model=model, batch_size=8)

    runs = {
        name: train(
            workload(name, fits), batch_size=8, max_steps=40, eval_every=10, device="cpu", final_gap=False
        )
        for name, fits in (("fits", None), ("outgrows", 64))
    }
    tried = models["outgrows"].chunks
    assert tried[:3] == [256, 128, 64]  # the first evaluation: two failures, then the chunk that fits
    assert max(tried[3:]) == 64  # every later chunk starts from the one that fitted
    assert set(models["fits"].chunks) >= {256}
    for a, b in zip(runs["fits"].curve, runs["outgrows"].curve, strict=True):
        assert a.step == b.step
        assert math.isclose(a.eval_loss, b.eval_loss, rel_tol=1e-5)  # type: ignore[arg-type]
        assert math.isclose(a.train_loss, b.train_loss, rel_tol=1e-5)  # type: ignore[arg-type]
