"""Each built-in workload's throughput curve on this machine: step time, samples/s, the knee."""

from __future__ import annotations

import time

from _common import write

from batchlab.measure.throughput import profile_throughput
from batchlab.workloads import BUILTINS


def main() -> None:
    rows, figures = [], {}
    for name in BUILTINS:
        started = time.perf_counter()
        profile = profile_throughput(name, repeats=5)
        figures[name] = {**profile.to_dict(), "wall_seconds": time.perf_counter() - started}
        curve = ", ".join(
            f"{p.batch_size}: {p.samples_per_second:,.0f}" for p in profile.points if p.samples_per_second
        )
        rows.append(f"| {name} | {profile.knee_batch_size} | {curve} |")
    table = [
        f"# throughput ({profile.device}, median of 5 blocks, {time.strftime('%Y-%m-%d')})",
        "",
        "| workload | knee | samples/s by batch size |",
        "|---|---|---|",
        *rows,
    ]
    write("throughput", {"workloads": figures}, table)


if __name__ == "__main__":
    main()
