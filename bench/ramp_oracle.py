"""Is the critical-batch study's ramp right? Against an oracle over ramps, side by side, over seeds.

For each row: `batchlab study critical-batch` from the row's batch (its ramp, validated over 3 seeds
inside the study), then the oracle: every doubling ramp that grows at some of 10%, 25% and 50% of
the constant batch's examples to target, with the rate scaled by the linear or the square-root rule,
each trained over the same 3 seeds for 2.5x the constant's examples to target. A ramp counts when
every seed reaches the target and its mean final loss is no worse than the constant batch's by more
than two standard errors of the difference (the seeds' spread: one seed's updates to target vary up
to 2x on these workloads). The oracle's answer is the counted ramp with the fewest median updates.
Goal (issue 17): a ramp with >= 30% fewer updates than the constant batch at equal or better loss.

`python bench/ramp_oracle.py NAME...` runs the named rows only (keys of ROWS). `--study-only` runs
the study again and keeps the row's oracle from bench/results/ramp_oracle.json: the oracle depends
only on the reference rate and the reference run's examples, so it is reused only where both match
(and the constant batch's updates to target, as a check).
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, write

import batchlab
from batchlab.lr import LrRule, scale_lr
from batchlab.measure.critical_batch import VALIDATION_LENGTH
from batchlab.schedule import BatchSchedule, Phase
from batchlab.studies.critical import seed_summary
from batchlab.studies.critical_findings import loss_difference
from batchlab.studies.run import run_study

BENCH = Path(__file__).parent
SEEDS = [0, 1, 2]
# name: (workload spec, starting batch, the oracle's growth points)
ROWS = {
    "digits-cnn@32": ("digits-cnn", 32, (0.1, 0.25, 0.5)),
    "digits-cnn@8": ("digits-cnn", 8, (0.1, 0.25, 0.5)),
    "tabular-adam@32": (f"{BENCH}/workloads.py:tabular_adam", 32, (0.1, 0.25, 0.5)),
    "charlm@32": ("charlm", 32, (0.1, 0.25)),  # ~15 s a run: single and double growth only
}


def arm(
    workload: batchlab.Workload, schedule: BatchSchedule | int, lr: float, epochs: float
) -> dict[str, Any]:
    """One schedule over SEEDS, summarized as the study summarizes its validation arms."""
    runs = [
        batchlab.train(workload, batch_size=schedule, lr=lr, max_epochs=epochs, seed=s, device="cpu")
        for s in SEEDS
    ]
    return seed_summary("oracle", "", runs, SEEDS, workload)


def verdict(ramp: dict[str, Any], constant: dict[str, Any]) -> tuple[float | None, bool]:
    """Updates saved against the constant batch, and whether the ramp counts (see the module)."""
    if ramp["updates_to_target"] is None or constant["updates_to_target"] is None:
        return None, False
    saved = 1 - ramp["updates_to_target"] / constant["updates_to_target"]
    difference = loss_difference(ramp, constant)
    assert difference is not None
    delta, error = difference
    return saved, delta <= 2 * error


def oracle_ramps(b: int, examples: int, fractions: tuple[float, ...]) -> list[tuple[str, BatchSchedule]]:
    out = []
    for rule, count in itertools.product((LrRule.LINEAR, LrRule.SQRT), range(1, len(fractions) + 1)):
        for starts in itertools.combinations(fractions, count):
            phases = [Phase(start_examples=0, batch_size=b, lr_factor=1.0)]
            for i, f in enumerate(starts, start=1):
                size = b * 2**i
                factor = scale_lr(rule, lr_ref=1.0, batch_ref=b, batch_size=size)
                phases.append(Phase(start_examples=round(f * examples), batch_size=size, lr_factor=factor))
            label = f"{rule.value}: " + " -> ".join(
                f"{p.batch_size}@{p.start_examples}" if p.start_examples else str(p.batch_size)
                for p in phases
            )
            out.append((label, BatchSchedule(tuple(phases))))
    return out


def run_row(name: str, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row's study, then its oracle, or `previous`'s oracle where it ran at the same rate and
    reference examples (the oracle's ramps depend on nothing else)."""
    spec, b, fractions = ROWS[name]
    workload = batchlab.load_workload(spec)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder, batchlab.Store(Path(folder) / "results.db") as store:
        study = run_study("critical-batch", workload, batch_size=b, store=store, validation_seeds=len(SEEDS))
    study_seconds = time.perf_counter() - began
    lr, examples = study.settings["lr"], study.settings["reference_examples_to_target"]
    epochs = VALIDATION_LENGTH * examples / workload.train_size
    by = {v["group"]: v for v in study.extra["validation"]}
    constant = by["constant"]
    study_saved, study_counts = verdict(by["ramp"], constant)
    # Rows written before reference_examples was kept match on the constant batch's updates instead
    # (the same rate on the same seeds trains the same runs on the CPU).
    reuse = (
        previous is not None
        and previous["lr"] == lr
        and previous.get("reference_examples", examples) == examples
        and previous["constant_updates"] == constant["updates_to_target"]
    )
    candidates = previous["candidates"] if previous is not None and reuse else []
    for label, schedule in [] if reuse else oracle_ramps(b, examples, fractions):
        result = arm(workload, schedule, lr, epochs)
        saved, counts = verdict(result, constant)
        candidates.append({"ramp": label, "saved": saved, "counts": counts, **result})
        print(f"  {name} {label}: saved {saved}, counts {counts}", flush=True)
    counted = [c for c in candidates if c["counts"]]
    best = max(counted, key=lambda c: c["saved"]) if counted else None
    return {
        "row": name,
        "batch_size": b,
        "critical_batch": [r["critical_batch"] for r in study.rows],
        "b_simple": [round(r["b_simple"], 1) for r in study.rows],
        "study_ramp": by["ramp"]["arm"],
        "study_saved": study_saved,
        "study_counts": study_counts,
        "lr": lr,
        "reference_examples": examples,
        "branch_orders": study.settings["branch_orders"],
        "lr_source": study.settings["lr_source"],
        "lr_start": study.settings["lr_start"],
        "constant_updates": constant["updates_to_target"],
        "constant_loss": constant["final_loss"],
        "study_seconds": study_seconds,
        "oracle_best": best,
        "candidates": candidates,
    }


def main() -> None:
    study_only = "--study-only" in sys.argv
    names = [a for a in sys.argv[1:] if a != "--study-only"] or list(ROWS)
    for name in names:
        if name not in ROWS:
            raise SystemExit(f"unknown row {name!r}: one of {', '.join(ROWS)}")
    # Rows already measured (by an earlier run of other rows) are kept; each finished row is written
    # at once, so a run cut short keeps what it finished.
    saved = RESULTS / "ramp_oracle.json"
    rows = json.loads(saved.read_text())["rows"] if saved.is_file() else []
    for name in names:
        previous = next((r for r in rows if r["row"] == name), None) if study_only else None
        row = run_row(name, previous)
        rows = [r for r in rows if r["row"] != name] + [row]
        rows.sort(key=lambda r: list(ROWS).index(r["row"]) if r["row"] in ROWS else len(ROWS))
        write_table(rows)


def write_table(rows: list[dict[str, Any]]) -> None:
    table = [
        "# The critical-batch study's ramp against an oracle over ramps",
        "",
        "`python bench/ramp_oracle.py` (2-core CPU, 3 seeds a schedule; counts = every seed reached the",
        "target and the mean final loss after 2.5x the constant's examples is within two standard",
        "errors of the constant batch's, or better). Goal: >= 30% fewer updates at equal or better loss.",
        "",
        "The rate: the study's reference rate at the row's batch (tuned: the workload's rate scaled by",
        "the optimizer's rule, then doubled while the run to the target got 10% shorter on both of two",
        "seeds). Constant: the constant batch at that rate, median updates to target and mean final loss.",
        "The study runs with its defaults (epsilon 0.2, branches over two data orders; `--study-only`",
        "reruns it and keeps the oracle where its rate and reference run are unchanged).",
        "",
        "| row | rate | constant: updates, loss | critical batch 10/25/50/75% | B_simple | study's ramp "
        "| saved | counts | best oracle ramp | saved | study s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        best = r["oracle_best"]
        rate = f"{r['lr']:.3g}" + (f" (from {r['lr_start']:.3g})" if r["lr"] != r["lr_start"] else "")
        updates = r["constant_updates"]
        constant = f"{updates:.0f}, " if updates is not None else "not all seeds reached, "
        table.append(
            f"| {r['row']} | {rate} | {constant}{r['constant_loss']:.4f} | "
            f"{'/'.join(str(c) if c else '-' for c in r['critical_batch'])} | "
            f"{'/'.join(f'{v:.0f}' for v in r['b_simple'])} | {r['study_ramp']} | "
            f"{'-' if r['study_saved'] is None else format(r['study_saved'], '.0%')} | "
            f"{'yes' if r['study_counts'] else 'no'} | {best['ramp'] if best else 'none counts'} | "
            f"{format(best['saved'], '.0%') if best else '-'} | {r['study_seconds']:.0f} |"
        )
    write("ramp_oracle", {"rows": rows}, table)


if __name__ == "__main__":
    main()
