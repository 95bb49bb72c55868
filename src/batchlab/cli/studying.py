"""The study command: one study by name, with its own options."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from batchlab.cli.options import (
    DeviceOpt,
    JsonOpt,
    TensorBoardOpt,
    WorkloadOpt,
    emit_json,
    open_store,
    parse_float_list,
    parse_int,
    parse_int_list,
    progress_bar,
    quiet,
    write_json,
    write_tensorboard,
)
from batchlab.cli.shell import err_console, guarded
from batchlab.core import dist as _dist
from batchlab.errors import bad
from batchlab.integrations import tensorboard as _tensorboard
from batchlab.render.report import render_study
from batchlab.render.tables import render, study_table, validation_table
from batchlab.studies.arms import StudyName
from batchlab.studies.run import STUDIES, run_study
from batchlab.workloads import load_workload


@guarded
def study_command(
    name: StudyName = typer.Argument(
        ..., help="lr-scaling, increase-batch, generalization, noise-vs-batch or critical-batch"
    ),
    workload: WorkloadOpt = "digits-cnn",
    epochs: float = typer.Option(None, "--epochs", help="training length of the base arms"),
    batch_sizes: str = typer.Option(None, "--batch-sizes", help="lr-scaling: default 64,256,1024"),
    batch_size: str = typer.Option(
        None, "--batch-size", metavar="INT", help="increase-batch: the first batch"
    ),
    milestones: str = typer.Option(
        None, "--milestones", help="increase-batch: epochs (default 1/4, 1/2, 3/4)"
    ),
    factor: float = typer.Option(None, "--factor", help="increase-batch: the fall of lr / batch (default 2)"),
    max_batch_size: str = typer.Option(
        None, "--max-batch-size", metavar="INT", help="increase-batch: the memory cap"
    ),
    small: str = typer.Option(None, "--small", metavar="INT", help="generalization: the small batch"),
    large: str = typer.Option(None, "--large", metavar="INT", help="generalization: the large batch"),
    ghost_batch_size: str = typer.Option(None, "--ghost-batch-size", metavar="INT", help="generalization"),
    draws: str = typer.Option(None, "--draws", metavar="INT", help="noise-vs-batch: batches per size"),
    points: str = typer.Option(
        None, "--points", help="critical-batch: fractions of the steps to target (default 0.1,0.25,0.5,0.75)"
    ),
    max_k: str = typer.Option(None, "--max-k", metavar="INT", help="critical-batch: largest branch multiple"),
    epsilon: float = typer.Option(
        None, "--epsilon", help="critical-batch: share of the k=1 branch's progress a branch may lose"
    ),
    branch_examples: str = typer.Option(
        None, "--branch-examples", metavar="INT", help="critical-batch: examples each branch trains on"
    ),
    advised_batch_size: str = typer.Option(
        None, "--advised-batch-size", metavar="INT", help="critical-batch: a constant batch to validate too"
    ),
    branch_rates: str = typer.Option(
        None,
        "--branch-rates",
        help="critical-batch: both (the rule's rate and the other, keep the better) or rule",
    ),
    validation_seeds: str = typer.Option(
        None, "--validation-seeds", metavar="INT", help="critical-batch: seeds the ramp is validated on (3)"
    ),
    branch_orders: str = typer.Option(
        None, "--branch-orders", metavar="INT", help="critical-batch: data orders each branch trains on (2)"
    ),
    lr: float = typer.Option(
        None, "--lr", help="critical-batch: the batch's rate (default: the workload's, scaled, then tuned)"
    ),
    keep_lr: bool = typer.Option(
        False, "--keep-lr", help="critical-batch: the workload's rate scaled to the batch, not tuned"
    ),
    seed: int = typer.Option(0, "--seed"),
    device: DeviceOpt = "auto",
    out: Path = typer.Option(None, "--out", help="folder for report.html, study.json, results.db"),
    tensorboard: TensorBoardOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Test a piece of large-batch folklore on your workload: a report and the numbers behind it."""
    import inspect

    _tensorboard.check_available(tensorboard)

    given = {
        "epochs": epochs,
        "batch_sizes": parse_int_list(batch_sizes, "batch_sizes", flag="--batch-sizes"),
        "batch_size": parse_int(batch_size, "batch_size", flag="--batch-size"),
        "milestones": parse_int_list(milestones, "milestones", flag="--milestones"),
        "factor": factor,
        "max_batch_size": parse_int(max_batch_size, "max_batch_size", flag="--max-batch-size"),
        "small": parse_int(small, "small", flag="--small"),
        "large": parse_int(large, "large", flag="--large"),
        "ghost_batch_size": parse_int(ghost_batch_size, "ghost_batch_size", flag="--ghost-batch-size"),
        "draws": parse_int(draws, "draws", flag="--draws"),
        "points": parse_float_list(points, "points", flag="--points"),
        "max_k": parse_int(max_k, "max_k", flag="--max-k"),
        "epsilon": epsilon,
        "branch_examples": parse_int(branch_examples, "branch_examples", flag="--branch-examples"),
        "advised_batch_size": parse_int(
            advised_batch_size, "advised_batch_size", flag="--advised-batch-size"
        ),
        "branch_rates": branch_rates,
        "validation_seeds": parse_int(validation_seeds, "validation_seeds", flag="--validation-seeds"),
        "branch_orders": parse_int(branch_orders, "branch_orders", flag="--branch-orders"),
        "lr": lr,
        "tune_lr": False if keep_lr else None,
    }
    accepted = inspect.signature(STUDIES[name]).parameters
    options = {k: v for k, v in given.items() if v is not None}
    for key in options:
        if key not in accepted:
            flag = {"tune_lr": "--keep-lr"}.get(key, "--" + key.replace("_", "-"))
            value = "set" if key == "tune_lr" else options[key]  # a flag: it has no value to show
            raise bad(flag, value, f"an option of another study, not {name.value}", f"drop {flag}")
    wl = load_workload(workload)
    folder = out if out is not None else Path(f"batchlab-study-{name.value}")
    store = open_store(folder)
    try:
        with progress_bar(f"study {name.value}", quiet=quiet(as_json)) as update:
            labels: list[str] = []

            def started(label: str) -> None:
                labels.append(label)
                update(len(labels) - 1, 0)

            result = run_study(name, wl, store=store, seed=seed, device=device, progress=started, **options)
    finally:
        if store is not None:
            store.close()
    data = result.to_dict()
    write_json(folder, "study.json", data)
    if "ramp" in data["extra"]:  # for `batchlab train --batch-schedule DIR/ramp.json`
        write_json(folder, "ramp.json", data["extra"]["ramp"])
    write_tensorboard(tensorboard, [(r["label"], r["curve"]) for r in data["runs"] if r.get("curve")])
    if _dist.is_main():
        (folder / "report.html").write_text(render_study(data))
    if as_json:
        emit_json(data)
        return
    render(study_table(data))
    if "validation" in data["extra"]:
        render(validation_table(data))
    for line in data["findings"]:
        Console().print(f"- {line}", highlight=False, markup=False, soft_wrap=True)
    err_console().print(f"report: [bold]{folder / 'report.html'}[/]", highlight=False)
