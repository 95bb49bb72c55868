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

import torch
from _common import write

import batchlab
from batchlab._step import backward
from batchlab.train import fresh_model

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


def monitor_rows(figures: dict[str, object]) -> list[str]:
    rows = []
    for name, steps in STEPS.items():
        loop_seconds(name, 10, True)
        loop_seconds(name, 10, False)
        plain, watched = [], []
        for _ in range(REPEATS):
            plain.append(loop_seconds(name, steps, False))
            watched.append(loop_seconds(name, steps, True))
        ratio = statistics.median(w / p for w, p in zip(watched, plain, strict=True))
        figures[f"{name} monitor"] = {
            "steps": steps, "batch_size": BATCH, "accumulation": 4, "plain_seconds": plain,
            "monitored_seconds": watched, "median_paired_slowdown": ratio, "meets_goal_1_02": ratio <= 1.02,
        }  # fmt: skip
        rows.append(
            f"| {name}, own loop + NoiseMonitor (accumulation 4) | {statistics.median(plain):.3f} "
            f"| {statistics.median(watched):.3f} | {ratio:.3f} (goal <= 1.02) |"
        )
    return rows


def main() -> None:
    rows, figures = [], {}
    for name, steps in STEPS.items():
        seconds(name, 20, True)  # warm up both paths
        seconds(name, 20, False)
        plain, tracked = [], []
        for _ in range(REPEATS):
            plain.append(seconds(name, steps, False))
            tracked.append(seconds(name, steps, True))
        ratio = statistics.median(t / p for t, p in zip(tracked, plain, strict=True))
        figures[name] = {
            "steps": steps,
            "batch_size": BATCH,
            "plain_seconds": plain,
            "tracked_seconds": tracked,
            "median_paired_slowdown": ratio,
            "meets_goal_1_05": ratio <= 1.05,
        }
        rows.append(
            f"| {name} | {statistics.median(plain):.3f} | {statistics.median(tracked):.3f} | {ratio:.3f} |"
        )
    rows += monitor_rows(figures)
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
