"""The memory probe on every built-in workload under two limits: the answer, trials and wall time.

The limits are chosen per workload so that one lands inside the batch range (a real memory edge)
and one is generous (the answer is the training set). The trial count is checked against the
bound ceil(log2(max_batch_size)) + 4.
"""

from __future__ import annotations

import math
import time

from _common import write

from batchlab.measure.memory import probe_memory
from batchlab.workloads import BUILTINS

MiB = 1024**2
LIMITS_MIB = {
    "digits-mlp": (300, 1536),
    "digits-cnn": (340, 1536),
    "linreg": (290, 1536),
    "charlm": (600, 1536),
}


def main() -> None:
    rows, figures = [], []
    for name in BUILTINS:
        for limit_mib in LIMITS_MIB[name]:
            started = time.perf_counter()
            profile = probe_memory(name, device="cpu", limit_bytes=limit_mib * MiB)
            wall = time.perf_counter() - started
            best = profile.max_batch_size
            bound = None if best is None else math.ceil(math.log2(max(best, 2))) + 4
            figures.append(
                {
                    "workload": name,
                    "limit_mib": limit_mib,
                    "max_batch_size": best,
                    "capped_by_dataset": profile.capped_by_dataset,
                    "trials": len(profile.trials),
                    "trial_bound": bound,
                    "sizes_tried": [t.batch_size for t in profile.trials],
                    "fixed_mib": None if profile.fixed_bytes is None else profile.fixed_bytes / MiB,
                    "per_sample_kib": None
                    if profile.per_sample_bytes is None
                    else profile.per_sample_bytes / 1024,
                    "wall_seconds": wall,
                }
            )
            rows.append(
                f"| {name} | {limit_mib} | {best}{' (all data)' if profile.capped_by_dataset else ''} | "
                f"{len(profile.trials)} / {bound} | {figures[-1]['per_sample_kib'] or 0:.1f} | {wall:.1f} |"
            )
    table = [
        f"# memory probe (cpu, {time.strftime('%Y-%m-%d')})",
        "",
        "| workload | limit MiB | max batch | trials / bound | per-sample KiB | wall s |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    write("memory_probe", {"runs": figures}, table)


if __name__ == "__main__":
    main()
