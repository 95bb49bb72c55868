"""Training recipes in the workload: the rate's schedule in examples, and gradient clipping."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from batchlab import BatchlabError, Target, Workload, train
from batchlab.recipe import LrSchedule
from batchlab.workloads import load_workload

from .helpers import assert_one_line_error, invoke


@pytest.mark.parametrize("batch_size", [32, 64])
def test_warm_up_covers_the_same_examples_at_any_batch(batch_size: int) -> None:
    """256 warm-up examples: 8 steps at 32, 4 at 64; each step's rate is the examples seen before it
    over 256 (Hugging Face's s / W in steps), so the step after example 128 runs at half the peak
    at both batches and the step after example 256 at the peak."""
    s = LrSchedule(warmup_examples=256)
    steps = 256 // batch_size
    rates = [s.factor(k * batch_size, 10_000) for k in range(steps + 2)]
    assert rates == pytest.approx([k / steps for k in range(steps)] + [1.0, 1.0])
    assert s.factor(128, 10_000) == pytest.approx(0.5)


@pytest.mark.parametrize("batch_size", [32, 64])
@pytest.mark.parametrize(
    ("decay", "at_half", "at_three_quarters"),
    [
        # From the warm-up's end (256) to the horizon (2304): halfway is example 1280, 3/4 is 1792.
        ("cosine", 0.1 + 0.9 * 0.5, 0.1 + 0.9 * 0.5 * (1 + math.cos(0.75 * math.pi))),
        ("linear", 0.1 + 0.9 * 0.5, 0.1 + 0.9 * 0.25),
        # WSD holds the peak until the last 20% (from 2304 - 461 = 1843), then falls linearly.
        ("wsd", 1.0, 1.0),
        ("constant", 1.0, 1.0),
    ],
)
def test_each_decay_at_known_points_reaches_its_floor_at_the_horizon(
    decay: str, at_half: float, at_three_quarters: float, batch_size: int
) -> None:
    """At either batch, the steps that start at examples 1280 and 1792 (40 and 56 at 32, 20 and 28
    at 64) run at the shape's rate there, and the step at the horizon at its floor."""
    s = LrSchedule(decay=decay, warmup_examples=256, final_fraction=0.1)
    horizon = 2304

    def at(examples: int) -> float:  # the rate of the step starting there, at this batch
        assert examples % batch_size == 0
        return s.factor(examples // batch_size * batch_size, horizon)

    assert at(1280) == pytest.approx(at_half)
    assert at(1792) == pytest.approx(at_three_quarters)
    end = 1.0 if decay == "constant" else 0.1
    assert at(horizon) == pytest.approx(end)
    assert at(2 * horizon) == pytest.approx(end)  # and holds there
    if decay == "wsd":  # halfway through its decay (1843 + 230.5), between steps: the formula
        assert s.factor(2073, horizon) == pytest.approx(0.1 + 0.9 * (1 - 230 / 461))


def test_a_stated_horizon_wins_over_the_runs_and_a_fraction_warms_up_over_its_share() -> None:
    s = LrSchedule(decay="linear", warmup_fraction=0.25, horizon_examples=1000)
    assert s.warmup(400) == 250  # of the stated horizon, not the run's 400
    assert s.factor(625, 400) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"decay": "exp"}, "schedule.decay must be one of constant, cosine, linear, wsd"),
        ({"warmup_examples": -1}, "schedule.warmup_examples must be an integer >= 0"),
        ({"final_fraction": 1.0}, "schedule.final_fraction must be a number in [0, 1)"),
        ({"warmup_examples": 10, "warmup_fraction": 0.1}, "in examples or as a fraction"),
    ],
)
def test_a_bad_schedule_names_its_field(kwargs: dict, words: str) -> None:
    with pytest.raises(BatchlabError) as raised:
        LrSchedule(**kwargs)
    assert words in str(raised.value)


def _linreg(**recipe: object) -> Workload:
    return dataclasses.replace(load_workload("linreg"), **recipe)  # type: ignore[arg-type]


def test_the_run_applies_the_schedule_at_each_step() -> None:
    """linreg at 0.02 peak, 64-example warm-up then cosine to a tenth over the run's 20 steps: each
    point's rate (the rate of the step just taken) is the schedule's, at both batches."""
    schedule = LrSchedule(decay="cosine", warmup_examples=64, final_fraction=0.1)
    curves = {}
    for b in (16, 32):
        result = train(_linreg(schedule=schedule), batch_size=b, lr=0.02, max_steps=20, eval_every=1)
        rates = [p.lr for p in result.curve[1:]]
        assert rates == pytest.approx([0.02 * schedule.factor(k * b, 20 * b) for k in range(20)], rel=1e-12)
        assert rates[64 // b] == pytest.approx(0.02)  # the first step after the warm-up
        curves[b] = rates
    # The same run with its length in examples: 320 examples at 16 are the same 20 steps.
    by_examples = train(_linreg(schedule=schedule), batch_size=16, lr=0.02, max_examples=320, eval_every=1)
    assert [p.lr for p in by_examples.curve[1:]] == curves[16]


def test_accumulation_with_a_schedule_and_a_clip_is_the_full_batch_run() -> None:
    """Batch 64 in one piece or four micro-batches of 16: the same steps, the clip applied once to the
    whole step's gradient (0.05 clips most of linreg's early steps), the same rates."""
    wl = _linreg(schedule=LrSchedule(decay="wsd", warmup_examples=128), clip_grad_norm=0.05)
    whole = train(wl, batch_size=64, lr=0.05, max_steps=30, eval_every=5, keep_model=True)
    parts = train(wl, batch_size=64, lr=0.05, max_steps=30, eval_every=5, keep_model=True, accumulation=4)
    assert whole.model is not None and parts.model is not None
    for a, b in zip(whole.model.parameters(), parts.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert [p.lr for p in whole.curve] == [p.lr for p in parts.curve]
    assert whole.clipped_fraction == parts.clipped_fraction
    assert whole.clipped_fraction is not None and whole.clipped_fraction > 0.5


class _Scale(nn.Module):
    """y = w x with w starting at 1: its gradient on one example (x, 0) is 2 x^2."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x


def test_the_clipped_fraction_counts_the_steps_over_the_clip() -> None:
    """Two examples, x = 1 and x = 10, one a step: every epoch takes one of each, in either order,
    with gradients 2 and 200 (a rate of 1e-9 leaves w at 1). A clip at 20 clips every other step."""
    x = torch.tensor([[1.0], [10.0]])
    wl = Workload(
        name="two-scales",
        model=_Scale,
        train_data=TensorDataset(x, torch.zeros(2, 1)),
        eval_data=None,
        loss=F.mse_loss,
        optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr),
        batch_size=1,
        lr=1e-9,
        target=Target(metric="train_loss", value=-1.0),
        clip_grad_norm=20.0,
    )
    assert train(wl, batch_size=1, max_steps=10).clipped_fraction == 0.5
    assert (
        train(dataclasses.replace(wl, clip_grad_norm=None), batch_size=1, max_steps=10).clipped_fraction
        is None
    )


def test_the_noise_monitor_reads_the_gradient_before_the_clip() -> None:
    """One step from the same initial weights, clipped hard or not at all: the monitor's reading is
    the unclipped gradient's either way (the noise scale needs the norm as it came)."""
    clipped = train(
        _linreg(clip_grad_norm=1e-4), batch_size=64, lr=0.02, max_steps=1, track_noise=True, noise_every=1
    )
    plain = train(_linreg(), batch_size=64, lr=0.02, max_steps=1, track_noise=True, noise_every=1)
    assert clipped.clipped_fraction == 1.0
    assert clipped.noise is not None and plain.noise is not None
    for key in ("grad_sq", "trace_sigma"):
        assert clipped.noise[key] == plain.noise[key]


def test_train_takes_the_recipe_from_its_options(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from .helpers import invoke_json

    data = invoke_json(
        "train",
        "-w",
        "linreg",
        "-b",
        "32",
        "--lr",
        "0.02",
        "--max-examples",
        "640",
        "--lr-schedule",
        "linear",
        "--warmup-examples",
        "64",
        "--final-lr-fraction",
        "0.5",
        "--clip",
        "0.05",
        "--eval-every",
        "1",
    )
    rates = [p["lr"] for p in data["curve"][1:]]
    assert len(rates) == 20 and rates[:3] == pytest.approx([0.0, 0.01, 0.02])
    assert rates[-1] == pytest.approx(0.02 * (0.5 + 0.5 * (1 - (608 - 64) / (640 - 64))))
    assert data["clipped_fraction"] > 0
    assert_one_line_error(
        invoke("train", "-w", "linreg", "--warmup-examples", "64", "--max-steps", "2"),
        "warmup_examples must be used with --lr-schedule",
    )


VOCAB, WINDOW, WIDTH = 16, 8, 16
CLIP = 0.3  # nanoGPT clips at 1.0; this tiny model's gradients are smaller, and 0.3 clips some steps


class TinyGPT(nn.Module):
    """One pre-norm transformer block with causal self-attention, as nanoGPT writes it, in small."""

    def __init__(self) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, WIDTH), nn.Embedding(WINDOW, WIDTH)
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        q, k, v = self.qkv(self.ln1(x)).split(WIDTH, dim=-1)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        x = x + self.mlp(self.ln2(x))
        return self.head(self.ln_f(x))


def _lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def _adamw(params: object, lr: float) -> torch.optim.Optimizer:
    """nanoGPT's configure_optimizers: weight decay on the 2-D weights only, betas (0.9, 0.95)."""
    params = list(params)  # type: ignore[call-overload]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def _token_windows(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(n + WINDOW + 1)
    stream = (3 * t + t // 7) % VOCAB
    windows = torch.stack([stream[i : i + WINDOW + 1] for i in range(n)])
    return windows[:, :-1], windows[:, 1:]


def test_a_nanogpt_recipe_as_a_plain_workload_runs_as_its_own_loop_does() -> None:
    """AdamW (decay on 2-D weights, betas 0.9/0.95), warm-up over 5 iterations' examples, cosine to a
    tenth of the peak at iteration 60, clipping at CLIP: written as a Workload (no optimizer
    subclass), batchlab's run matches the same recipe as a plain PyTorch loop step for step (its
    rates, losses and final weights within 1e-5), and reaches its target."""
    batch, steps, peak = 16, 60, 2e-2
    x, y = _token_windows(512)
    workload = Workload(
        name="tiny-gpt",
        model=TinyGPT,
        train_data=TensorDataset(x, y),
        eval_data=None,
        loss=_lm_loss,
        optimizer=_adamw,
        batch_size=batch,
        lr=peak,
        target=Target(metric="train_loss", value=1.5),
        schedule=LrSchedule(decay="cosine", warmup_examples=5 * batch, final_fraction=0.1),
        clip_grad_norm=CLIP,
    )
    run = train(workload, batch_size=batch, max_steps=steps, eval_every=1, keep_model=True)

    def get_lr(it: int) -> float:  # nanoGPT's, as first written (warm-up it / warmup_iters)
        if it < 5:
            return peak * it / 5
        ratio = (it - 5) / (steps - 5)
        return 0.1 * peak + 0.5 * (1 + math.cos(math.pi * ratio)) * (peak - 0.1 * peak)

    torch.manual_seed(0)
    model = TinyGPT()
    optimizer = _adamw(model.parameters(), peak)
    order_generator = torch.Generator().manual_seed(0)
    rates, losses = [], []
    while len(losses) < steps:
        order = torch.randperm(len(x), generator=order_generator)
        for start in range(0, len(x) - batch + 1, batch):
            if len(losses) == steps:
                break
            lr = get_lr(len(losses))
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[start : start + batch]
            loss = _lm_loss(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            optimizer.step()
            rates.append(lr)
            losses.append(loss.item())
    assert [p.lr for p in run.curve[1:]] == pytest.approx(rates, rel=1e-12)
    assert [p.batch_loss for p in run.curve[1:]] == pytest.approx(losses, abs=1e-5)
    assert run.model is not None
    for mine, theirs in zip(run.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    assert run.reached_target
    assert run.clipped_fraction is not None and 0 < run.clipped_fraction < 1  # the clip was in play


def test_a_run_to_the_target_decays_only_over_a_stated_horizon() -> None:
    """A run to the target has no length of its own: after the warm-up it holds the peak, unless
    the schedule states its horizon (then it decays over that, as any run does)."""
    schedule = LrSchedule(decay="cosine", warmup_examples=64)
    held = train(_linreg(schedule=schedule), batch_size=32, lr=0.02, until_target=True, eval_every=1)
    assert held.reached_target
    assert [p.lr for p in held.curve[1:]] == pytest.approx([0.0, 0.01] + [0.02] * (len(held.curve) - 3))
    stated = dataclasses.replace(schedule, horizon_examples=12800)  # (shorter: it decays to 0.52 and stalls)
    decayed = train(_linreg(schedule=stated), batch_size=32, lr=0.02, until_target=True, eval_every=1)
    assert decayed.reached_target
    rates = [p.lr for p in decayed.curve[1:]]
    assert rates == pytest.approx([0.02 * stated.factor(32 * k, 0) for k in range(len(rates))])
    assert rates[-1] < 0.02


def test_the_advice_says_how_it_ran_the_recipe() -> None:
    """linreg with a 256-example warm-up, a cosine decay and a clip at 0.05 (most of its early steps
    clip): the advice keeps the warm-up in examples, holds the peak in its runs to the target (no
    horizon stated), and says how many of the reference's steps clipped, with the limitation. Its
    Hugging Face settings are that warm-up at the advised batch, then the peak, and the clip."""
    from batchlab import advise

    wl = _linreg(schedule=LrSchedule(decay="cosine", warmup_examples=256), clip_grad_norm=0.05)
    advice = advise(wl, emit="hf")
    b = advice.batch_size
    text = " ".join(advice.rationale)
    assert f"Warm-up over 256 examples at every batch: {math.ceil(256 / b)} steps at batch {b}, 8 at" in text
    assert "The workload's cosine decay needs a horizon" in text
    clipped = [line for line in advice.rationale if line.startswith("Gradients clip at norm 0.05: ")]
    assert len(clipped) == 1
    share = int(clipped[0].split(": ")[1].split("%")[0])
    assert (share > 50) == any(
        "of the reference run's steps clipped: a clipped step" in x for x in advice.limitations
    )
    assert advice.emitted is not None
    hf = advice.emitted["hf"].splitlines()
    assert "    lr_scheduler_type='constant_with_warmup'," in hf
    assert f"    warmup_steps={math.ceil(256 / b)}," in hf and "    max_grad_norm=0.05," in hf


def test_a_sweep_takes_the_recipe_from_its_options() -> None:
    """sweep --lr-schedule cosine --warmup-examples 64 --horizon-examples 2000 --clip 1: every
    run's every step runs at its own peak times the schedule at the examples before it."""
    from .helpers import invoke_json

    data = invoke_json(
        "sweep", "-w", "linreg", "--batch-sizes", "8,32", "--max-steps", "30", "--no-sharpness",
        "--lr-schedule", "cosine", "--warmup-examples", "64", "--horizon-examples", "2000", "--clip", "1",
    )  # fmt: skip
    schedule = LrSchedule(decay="cosine", warmup_examples=64, horizon_examples=2000)
    for run in data["runs"]:
        b, points = run["batch_size"], run["curve"][1:]
        assert len(points) > 5
        expected = [run["lr"] * schedule.factor(p["examples"] - b, 0) for p in points]
        assert [p["lr"] for p in points] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert_one_line_error(
        invoke("sweep", "-w", "linreg", "--horizon-examples", "100"),
        "horizon_examples must be used with --lr-schedule",
    )


def test_a_branch_continues_the_schedule_from_its_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """linreg with a WSD schedule over a stated 1280 examples, checkpointed at step 10 of 32 at
    batch 32: resumed at 32, the steps after the checkpoint run at the uninterrupted run's rates; a
    branch at 64 (the critical-batch measurement's) runs at the schedule's rate at the examples it
    has reached, its own peak times the factor there, as if the schedule had never been stepped."""
    schedule = LrSchedule(decay="wsd", warmup_examples=128, decay_fraction=0.5, horizon_examples=1280)
    wl = _linreg(schedule=schedule)
    full = train(
        wl, batch_size=32, lr=0.02, max_steps=32, eval_every=1, checkpoint_at=[10], checkpoint_dir=tmp_path
    )
    path = full.checkpoints[0]["path"]
    resumed = train(wl, batch_size=32, lr=0.02, max_steps=32, eval_every=1, resume_from=path)
    assert [p.lr for p in resumed.curve[1:]] == [p.lr for p in full.curve[11:]]
    branch = train(wl, batch_size=64, lr=0.04, max_steps=20, eval_every=1, resume_from=path)
    rates = [p.lr for p in branch.curve[1:]]
    assert rates == pytest.approx([0.04 * schedule.factor(320 + 64 * k, 0) for k in range(10)], rel=1e-12)
    assert rates[0] == 0.04 and rates[-1] == pytest.approx(0.04 * 0.6)  # 896 is 0.4 into the decay
