"""Training data as people stream it: a workload over an IterableDataset trains with a length in
examples, and throughput, memory and the noise scale run on it; what needs a size says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from batchlab import train
from batchlab.measure.memory import probe_memory
from batchlab.measure.noise import measure_noise
from batchlab.workloads import load_workload

from .helpers import assert_one_line_error, invoke, invoke_json

DATA = Path(__file__).parent / "data"
STREAMS = DATA / "stream_workloads.py"


def _stream(name: str):  # type: ignore[no-untyped-def]
    return load_workload(f"{STREAMS}:{name}")


def test_a_stream_trains_as_a_loop_reading_it_in_order() -> None:
    """100 windows read in order at batch 16: six batches a pass (the last 4 dropped, as an epoch's
    partial batch is), 30 steps = 480 examples over five passes. batchlab's run is the plain loop
    over the same batches step for step (losses and weights within 1e-5)."""
    wl = _stream("windows")
    run = train(wl, batch_size=16, max_examples=480, eval_every=1, keep_model=True)
    assert (run.steps, run.examples) == (30, 480)
    assert run.data_order is not None and "every seed reads it in its own order" in run.data_order

    torch.manual_seed(0)
    model = wl.model()
    optimizer = wl.optimizer(model.parameters(), wl.lr)
    windows = wl.train_data.windows()
    losses = []
    for _ in range(5):
        for start in range(0, 96, 16):
            x = torch.stack([w[0] for w in windows[start : start + 16]])
            y = torch.stack([w[1] for w in windows[start : start + 16]])
            loss = wl.loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert [p.batch_loss for p in run.curve[1:]] == pytest.approx(losses, abs=1e-5)
    assert run.model is not None
    for mine, theirs in zip(run.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_a_stream_with_a_seeded_shuffle_takes_the_runs_seed() -> None:
    """The same seed reads the same order (the same losses); another seed another order."""
    wl = _stream("shuffled_windows")

    def losses(seed: int) -> list[float]:
        run = train(wl, batch_size=16, max_steps=12, eval_every=1, seed=seed)
        assert run.data_order is not None and "seeded with the run's seed" in run.data_order
        return [p.batch_loss for p in run.curve[1:]]  # type: ignore[misc]

    first = losses(0)
    assert losses(0) == first
    assert losses(1) != first


def test_the_cli_trains_a_stream_for_examples_or_tokens_and_refuses_epochs(tmp_path: Path) -> None:
    spec = f"{STREAMS}:windows"
    data = invoke_json("train", "-w", spec, "-b", "16", "--max-examples", "320", "--out", str(tmp_path))
    assert (data["steps"], data["examples"]) == (20, 320)
    assert data["data_order"].startswith("the stream has no seeded shuffle")
    # In tokens (6 a window): 1920 tokens are the same 320 examples; a warm-up of 384 tokens is 64
    # examples, 4 steps of 16 rising from 0 (s / 4 of the peak).
    tokens = invoke_json(
        "train", "-w", spec, "-b", "16", "--lr", "0.02", "--max-tokens", "1920", "--eval-every", "1",
        "--lr-schedule", "constant", "--warmup-tokens", "384",
    )  # fmt: skip
    assert (tokens["steps"], tokens["examples"], tokens["tokens_per_example"]) == (20, 320, 6)
    assert [p["lr"] for p in tokens["curve"][1:6]] == pytest.approx([0.0, 0.005, 0.01, 0.015, 0.02])
    assert_one_line_error(
        invoke("train", "-w", "linreg", "--max-tokens", "1000"),
        "max_tokens must be used with a workload that states tokens_per_example",
    )
    assert_one_line_error(
        invoke("train", "-w", spec, "-b", "16", "--max-epochs", "2"),
        "workload.train_data must be a map-style Dataset where the training set's size is needed",
        "--max-examples",
    )


def test_throughput_times_a_stream_at_the_sizes_it_is_given() -> None:
    spec = f"{STREAMS}:windows"
    data = invoke_json("throughput", "-w", spec, "--batch-sizes", "8,32", "--repeats", "1")
    assert [p["batch_size"] for p in data["points"]] == [8, 32]
    assert all(p["samples_per_second"] > 0 for p in data["points"])
    assert_one_line_error(invoke("throughput", "-w", spec), "max_batch_size must be given for a stream")


def test_memory_finds_the_same_edge_on_a_stream_in_the_same_trials() -> None:
    """memory_workloads.fake_oom over the stream of its own 1000 vectors, capped at 1000 as the set
    caps the map-style one: the same sizes tried, the same 300."""
    stream = probe_memory(f"{STREAMS}:fake_oom_stream", device="cpu", max_batch_size=1000)
    mapped = probe_memory(f"{DATA / 'memory_workloads.py'}:fake_oom", device="cpu")
    assert stream.max_batch_size == mapped.max_batch_size == 300
    assert [t.batch_size for t in stream.trials] == [t.batch_size for t in mapped.trials]


def test_the_noise_scale_of_a_stream_reads_as_many_examples_as_it_trained() -> None:
    """Twenty steps of 16 read 320 examples; the final pass reads as many, in micro-batches of 4:
    80 micro-batches, every one a sample of the noise (no finite population: a stream's is open)."""
    estimate, _ = measure_noise(_stream("windows"), batch_size=16, micro_batches=4, steps=20)
    assert estimate.measured_examples == 320
    assert len(estimate.history) == 20
    assert estimate.b_simple > 0 and estimate.b_simple_stderr < estimate.b_simple
