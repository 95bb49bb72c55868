"""Training with track_noise=True against without, side by side in one run.

Both train the same model from the same seed for the same steps; runs alternate, and the median
of the paired ratios of training seconds is kept. Goal: tracking costs at most 5%.
"""

from __future__ import annotations

import statistics
import time

from _common import write

import batchlab

STEPS = {"digits-mlp": 1000, "charlm": 100}
BATCH = 64
REPEATS = 7


def seconds(name: str, steps: int, track: bool) -> float:
    result = batchlab.train(name, batch_size=BATCH, max_steps=steps, eval_every=steps, track_noise=track)
    return result.seconds


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
    table = [
        f"# noise-tracking overhead (batch {BATCH}, median of {REPEATS}, {time.strftime('%Y-%m-%d')})",
        "",
        "| workload | plain s | track_noise s | median paired slowdown (goal <= 1.05) |",
        "|---|---|---|---|",
        *rows,
    ]
    write("noise_overhead", {"goal": "track_noise at most 5% slower", "workloads": figures}, table)


if __name__ == "__main__":
    main()
