"""Training with track_noise=True against without, side by side in one run; and a user's own loop
with gradient accumulation (4 micro-batches, every step measured) with a NoiseMonitor attached
against without.

Both train the same model from the same seed for the same steps; runs alternate, and the median
of the paired ratios of training seconds is kept. Goals: track_noise costs at most 5%; the monitor
in a user's loop at most 2%.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from _common import write

import batchlab
from batchlab.core.step import backward
from batchlab.train.model import fresh_model

STEPS = {"digits-mlp": 1000, "charlm": 100}
BATCH = 64
REPEATS = 7


def seconds(name: str, steps: int, track: bool) -> float:
    result = batchlab.train(name, batch_size=BATCH, max_steps=steps, eval_every=steps, track_noise=track)
    return result.seconds


def loop_seconds(name: str, steps: int, attach: bool, accumulation: int = 4) -> float:
    """A plain loop as a user writes it: K micro-batches a step, the monitor's step() before the
    optimizer's when attached."""
    workload = batchlab.load_workload(name)
    model = fresh_model(workload, 0, torch.device("cpu"))
    optimizer = workload.optimizer(model.parameters(), workload.lr)
    monitor = batchlab.NoiseMonitor(model) if attach else None
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(8):
        indices = torch.randint(0, workload.train_size, (BATCH,), generator=generator).tolist()
        xs, ys = zip(*[workload.train_data[i] for i in indices], strict=True)
        batches.append((torch.stack(xs), torch.stack(ys)))
    began = time.perf_counter()
    for step in range(steps):
        backward(model, workload.loss, batches[step % len(batches)], micro_batches=accumulation)
        if monitor is not None:
            monitor.step(BATCH)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - began


def paired(
    run: Callable[[str, int, bool], float], name: str, steps: int
) -> tuple[list[float], list[float], float]:
    """Seconds without and with, alternating after a warm-up of each, and the median paired ratio."""
    run(name, 10, True)
    run(name, 10, False)
    plain, tracked = [], []
    for _ in range(REPEATS):
        plain.append(run(name, steps, False))
        tracked.append(run(name, steps, True))
    return plain, tracked, statistics.median(t / p for t, p in zip(tracked, plain, strict=True))


def main() -> None:
    rows, figures = [], {}
    for label, run, goal in (
        ("", seconds, 1.05),
        (", own loop + NoiseMonitor (accumulation 4)", loop_seconds, 1.02),
    ):
        for name, steps in STEPS.items():
            plain, tracked, ratio = paired(run, name, steps)
            figures[name + label] = {
                "steps": steps, "batch_size": BATCH, "plain_seconds": plain, "tracked_seconds": tracked,
                "median_paired_slowdown": ratio, "goal": goal, "meets_goal": ratio <= goal,
            }  # fmt: skip
            rows.append(
                f"| {name}{label} | {statistics.median(plain):.3f} | {statistics.median(tracked):.3f} "
                f"| {ratio:.3f} (goal <= {goal}) |"
            )
    table = [
        f"# noise-tracking overhead (batch {BATCH}, median of {REPEATS}, {time.strftime('%Y-%m-%d')})",
        "",
        "| workload | plain s | tracked s | median paired slowdown (goal <= 1.05; monitor <= 1.02) |",
        "|---|---|---|---|",
        *rows,
    ]
    write("noise_overhead", {"goal": "track_noise at most 5% slower", "workloads": figures}, table)


if __name__ == "__main__":
    main()
