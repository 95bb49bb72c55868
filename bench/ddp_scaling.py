"""Data-parallel scaling on this machine: samples/s for 1 and 2 gloo ranks, for each built-in workload.

Each workload is timed three ways, one thread per process (what torchrun sets), side by side:
  - 2 ranks under torchrun at global batch B (per-device B/2), through DDP;
  - 1 rank alone at the per-device batch B/2, timed in the same torchrun run (weak scaling:
    efficiency = samples/s of 2 ranks / (2 x one rank's));
  - 1 process at the whole global batch B (strong scaling: does splitting the same batch pay?).
On a 2-core CPU the two ranks share the machine's memory bandwidth and gloo copies gradients through
loopback TCP: these figures say what data-parallel costs here, not on a GPU cluster.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from _common import write

BATCHES = {"digits-mlp": [64, 256], "digits-cnn": [64, 256], "linreg": [64, 256], "charlm": [32, 128]}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _throughput(workload: str, sizes: list[int], ranks: int) -> dict:
    args = [
        "throughput",
        "--workload",
        workload,
        "--batch-sizes",
        ",".join(map(str, sizes)),
        "--repeats",
        "5",
    ]
    args += ["--device", "cpu", "--json"]
    command = [sys.executable, "-m", "batchlab", *args]
    if ranks > 1:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
            "--master_addr", "127.0.0.1", "--master_port", str(_port()), "-m", "batchlab", *args,
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True, timeout=1800)
    return json.loads(done.stdout)


def main() -> None:
    rows, figures = [], {}
    for workload, sizes in BATCHES.items():
        started = time.perf_counter()
        pair = _throughput(workload, sizes, ranks=2)
        whole = _throughput(workload, sizes, ranks=1)
        figures[workload] = {
            "two_ranks": pair,
            "one_process": whole,
            "wall_seconds": time.perf_counter() - started,
        }
        for p, q in zip(pair["points"], whole["points"], strict=True):
            cells = [
                workload,
                str(p["batch_size"]),
                str(p["batch_size"] // 2),
                f"{p['single_rank_samples_per_second']:,.0f}",
                f"{p['samples_per_second']:,.0f}",
                f"{p['scaling_efficiency']:.2f}",
                f"{q['samples_per_second']:,.0f}",
                f"{p['samples_per_second'] / q['samples_per_second']:.2f}",
            ]
            rows.append("| " + " | ".join(cells) + " |")
    day = time.strftime("%Y-%m-%d")
    table = [
        f"# data-parallel scaling (CPU, gloo, 1 thread per process, median of 5 blocks, {day})",
        "",
        "| workload | global batch | per device | 1 rank samples/s (per-device batch) | 2 ranks samples/s "
        "| weak-scaling efficiency | 1 process samples/s (global batch) | 2 ranks / 1 process |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    write("ddp_scaling", {"workloads": figures}, table)


if __name__ == "__main__":
    main()
