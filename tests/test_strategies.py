"""Memory strategies, measured: bf16 autocast and activation checkpointing lower per-sample bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchlab import ConfigError, load_workload, train
from batchlab.measure import strategies
from batchlab.measure.memory_trial import TrialPlan, TrialServer

DATA = Path(__file__).parent / "data" / "memory_workloads.py"


def per_sample_bytes(server: TrialServer, spec: str, small: int, big: int, **strategy: object) -> float:
    """The slope of peak memory between two batch sizes, each a real trial in a child process."""
    peaks = []
    for b in (small, big):
        plan = TrialPlan(spec, b, "cpu", 2**40, True, 4, 40, **strategy)  # type: ignore[arg-type]
        outcome = server.run(plan, confirmation=False)
        assert outcome.fits and outcome.peak_bytes is not None
        peaks.append(outcome.peak_bytes)
    return (peaks[1] - peaks[0]) / (big - small)


def test_bf16_lowers_per_sample_bytes_on_large_activations() -> None:
    """A linear layer 8 -> 65536 keeps two (B, 65536) activations for backward: 512 KiB a sample in
    fp32, half in bf16. Measured: bf16 below 0.75x fp32 (run-to-run noise is ~0.2 MiB on a
    ~25 MiB difference between the two batch sizes)."""
    server = TrialServer()
    try:
        fp32 = per_sample_bytes(server, f"{DATA}:wide_mlp", 16, 64)
        bf16 = per_sample_bytes(server, f"{DATA}:wide_mlp", 16, 64, precision="bf16")
    finally:
        server.close()
    assert fp32 > 400 * 1024
    assert bf16 < 0.75 * fp32


def test_checkpointing_lowers_per_sample_bytes_on_charlm() -> None:
    """charlm keeps each block's attention and MLP activations; checkpointed, only block inputs stay."""
    server = TrialServer()
    try:
        plain = per_sample_bytes(server, "charlm", 8, 64)
        checkpointed = per_sample_bytes(server, "charlm", 8, 64, checkpoint=True)
    finally:
        server.close()
    assert checkpointed < 0.8 * plain


def test_a_model_without_blocks_says_so() -> None:
    with pytest.raises(ConfigError, match="has none to wrap"):
        train("digits-mlp", batch_size=32, max_steps=1, checkpoint=True)


def test_fp16_needs_cuda() -> None:
    with pytest.raises(ConfigError, match="fp16 autocast needs CUDA"):
        train("digits-mlp", batch_size=32, max_steps=1, precision="fp16", device="cpu")


def test_bf16_training_reaches_the_target() -> None:
    """digits-cnn under bf16 autocast reaches its target, as in fp32."""
    workload = load_workload("digits-cnn")
    result = train(workload, batch_size=32, precision="bf16", until_target=True, device="cpu")
    assert result.reached_target and result.precision == "bf16"
    assert result.steps_to_target is not None and result.steps_to_target < 400


def test_cli_strategies_json() -> None:
    """`batchlab memory --strategies --json` lists each strategy with the four keys; a model without
    blocks gets a checkpoint row that says so instead of a number."""
    from .helpers import invoke_json

    data = invoke_json("memory", "--workload", "linreg", "--strategies", "--memory-limit", "400MiB")
    rows = {r["strategy"]: r for r in data["strategies"]}
    assert {"fp32", "bf16", "fp32 + accumulation x4", "checkpoint"} <= set(rows)
    for row in data["strategies"]:
        assert {"strategy", "max_batch_size", "per_sample_bytes", "samples_per_second"} <= set(row)
    assert rows["fp32"]["max_batch_size"] == 8192 and rows["fp32"]["samples_per_second"] > 0
    assert rows["checkpoint"]["max_batch_size"] is None and "no `blocks`" in rows["checkpoint"]["note"]


def test_strategies_take_the_probe_s_bounds() -> None:
    """--max-batch-size and --granularity bound every strategy's search as they bound one probe's
    (they were ignored): linreg fits its whole set, so each answer is the largest multiple of 32 up
    to 100, and accumulation x4 makes that 4x."""
    from .helpers import invoke_json

    data = invoke_json(
        "memory", "--workload", "linreg", "--strategies", "--memory-limit", "400MiB",
        "--max-batch-size", "100", "--granularity", "32",
    )  # fmt: skip
    rows = {r["strategy"]: r["max_batch_size"] for r in data["strategies"]}
    assert (rows["fp32"], rows["bf16"], rows["fp32 + accumulation x4"]) == (96, 96, 384)


@pytest.mark.parametrize(
    ("args", "flag"), [(["--precision", "bf16"], "--precision"), (["--checkpoint"], "--checkpoint")]
)
def test_a_setting_that_strategies_tries_itself_is_refused_beside_it(args: list[str], flag: str) -> None:
    from .helpers import assert_one_line_error, invoke

    result = invoke("memory", "--workload", "linreg", "--strategies", *args)
    assert_one_line_error(result, f"{flag} must be left out with --strategies", f"drop {flag}")


@pytest.mark.parametrize(
    ("bf16_speed", "has_bf16", "says"),
    [
        (300.0, True, "bf16 emulated on this CPU: 3.3x slower than fp32"),
        (800.0, True, "1.25x slower than fp32 here: saves memory, not time"),
        (800.0, False, "bf16 emulated on this CPU: 1.2x slower than fp32"),
        (1200.0, True, None),
    ],
)
def test_a_slow_bf16_is_called_what_it_is(bf16_speed: float, has_bf16: bool, says: str | None) -> None:
    """Under half fp32's speed, or on a CPU whose flags show no bf16 instructions, bf16 is
    emulated; slower but not that slow, it saves memory, not time; faster, nothing is said."""
    rows = [
        strategies.StrategyRow(strategy="fp32", samples_per_second=1000.0),
        strategies.StrategyRow(strategy="bf16", precision="bf16", samples_per_second=bf16_speed, note="x"),
    ]
    note = strategies.with_bf16_verdict(rows, native_bf16=has_bf16)[1].note
    assert note == ("x" if says is None else f"x; {says}")
