"""batchlab.train's samples/s against a plain hand-written PyTorch loop, side by side in one run.

Both train the same fresh model on the same data at batch 64 with the same seeded order, for the
same number of steps, timed the same way (clock read after a device synchronize, evaluation
excluded). Runs alternate so that machine noise hits both alike; the median paired ratio is kept.
Goal: batchlab at 0.97x of the plain loop or better.
"""

from __future__ import annotations

import statistics
import time

import torch
from _common import write

import batchlab
from batchlab.core.device import clock

BATCH = 64
STEPS = {"digits-mlp": 1000, "charlm": 60}
REPEATS = 11


def plain_loop(workload: batchlab.Workload, steps: int, device: torch.device) -> float:
    """The loop people write by hand: zero_grad, forward, loss, backward, step. Returns seconds."""
    torch.manual_seed(0)
    model = workload.model().to(device)
    optimizer = workload.optimizer(model.parameters(), workload.lr * BATCH / workload.batch_size)
    x_all, y_all = (t.to(device) for t in workload.train_data.tensors)  # type: ignore[attr-defined]
    generator = torch.Generator().manual_seed(0)
    n = len(x_all)
    done = 0
    start = clock(device)
    while done < steps:
        order = torch.randperm(n, generator=generator).to(device)
        for i in range(0, n - BATCH + 1, BATCH):
            idx = order[i : i + BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss = workload.loss(model(x_all[idx]), y_all[idx])
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return clock(device) - start


def batchlab_loop(workload: batchlab.Workload, steps: int, device: torch.device) -> float:
    result = batchlab.train(workload, batch_size=BATCH, max_steps=steps, eval_every=steps, device=device)
    return result.seconds


def main() -> None:
    device = batchlab.core.device.resolve_device("auto")
    rows, figures = [], {}
    for name, steps in STEPS.items():
        workload = batchlab.load_workload(name)
        plain_loop(workload, 10, device)  # warm up both paths (allocator, kernels) before timing
        batchlab_loop(workload, 10, device)
        plain, ours = [], []
        for _ in range(REPEATS):
            plain.append(BATCH * steps / plain_loop(workload, steps, device))
            ours.append(BATCH * steps / batchlab_loop(workload, steps, device))
        # Each repeat runs both loops back to back; the median of the paired ratios resists the
        # shared machine's drifts better than a ratio of two medians.
        ratio = statistics.median(o / p for o, p in zip(ours, plain, strict=True))
        figures[name] = {
            "batch_size": BATCH,
            "steps": steps,
            "repeats": REPEATS,
            "plain_samples_per_second": plain,
            "batchlab_samples_per_second": ours,
            "median_paired_ratio": ratio,
            "meets_goal_0_97": ratio >= 0.97,
        }
        rows.append(
            f"| {name} | {statistics.median(plain):,.0f} | {statistics.median(ours):,.0f} | {ratio:.3f} |"
        )
    table = [
        f"# loop overhead ({device}, batch {BATCH}, median of {REPEATS}, {time.strftime('%Y-%m-%d')})",
        "",
        "| workload | plain loop samples/s | batchlab samples/s | median paired ratio (goal >= 0.97) |",
        "|---|---|---|---|",
        *rows,
    ]
    write("loop_overhead", {"goal": "batchlab >= 0.97x plain loop", "workloads": figures}, table)


if __name__ == "__main__":
    main()
