"""The NoiseMonitor's overhead on a data-parallel run: 2 gloo ranks (torchrun) training charlm with
DDP, accumulation 2 (no_sync on the first micro-batch), with a monitor attached against without,
alternating, median of the paired ratios of rank 0's seconds. Goal: at most 2%."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from _common import write

STEPS, MICRO, K, REPEATS = 60, 16, 2, 9
ROOT = Path(__file__).parents[1]


def worker() -> None:
    import batchlab
    from batchlab.core.step import backward
    from batchlab.train.model import fresh_model

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    workload = batchlab.load_workload("charlm")
    generator = torch.Generator().manual_seed(dist.get_rank())
    batches = []
    for _ in range(4):
        indices = torch.randint(0, workload.train_size, (MICRO * K,), generator=generator).tolist()
        xs, ys = zip(*[workload.train_data[i] for i in indices], strict=True)
        batches.append((torch.stack(xs), torch.stack(ys)))

    def run(attach: bool) -> float:
        model = fresh_model(workload, 0, torch.device("cpu"))
        net = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = workload.optimizer(model.parameters(), workload.lr)
        monitor = batchlab.NoiseMonitor(net) if attach else None
        dist.barrier()
        began = time.perf_counter()
        for step in range(STEPS):
            backward(net, workload.loss, batches[step % 4], micro_batches=K, no_sync=net.no_sync)
            if monitor is not None:
                monitor.step(MICRO * K * dist.get_world_size())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        dist.barrier()
        return time.perf_counter() - began

    run(True), run(False)
    plain, watched = [], []
    for _ in range(REPEATS):
        plain.append(run(False))
        watched.append(run(True))
    if dist.get_rank() == 0:
        print(json.dumps({"plain": plain, "watched": watched}))
    dist.destroy_process_group()


def main() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "bench")])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         __file__, "--worker"],
        capture_output=True, text=True, env=env, timeout=1200,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    data = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = statistics.median(w / p for w, p in zip(data["watched"], data["plain"], strict=True))
    table = [
        f"# NoiseMonitor on 2 gloo ranks (charlm, {MICRO} x {K} a rank, {STEPS} steps, median of {REPEATS}, "
        f"{time.strftime('%Y-%m-%d')})",
        "",
        "| plain s | with the monitor s | median paired slowdown (goal <= 1.02) |",
        "|---|---|---|",
        f"| {statistics.median(data['plain']):.3f} | {statistics.median(data['watched']):.3f} "
        f"| {ratio:.3f} |",
    ]
    write("monitor_ddp", {"steps": STEPS, "micro": MICRO, "accumulation": K, **data, "ratio": ratio}, table)


if __name__ == "__main__":
    worker() if sys.argv[1:] == ["--worker"] else main()
