"""`batchlab study NAME`: one subcommand per study, each with its own options and the shared ones
(workload, seed, device, output folder, TensorBoard, --json)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from batchlab.cli.options import (
    DeviceOpt,
    JsonOpt,
    TensorBoardOpt,
    emit_json,
    int_option,
    open_store,
    parse_float_list,
    parse_int_list,
    progress_bar,
    quiet,
    write_json,
    write_tensorboard,
)
from batchlab.cli.shell import err_console, guarded
from batchlab.cli.usage import Commands, seed_number
from batchlab.core import dist as _dist
from batchlab.integrations import tensorboard as _tensorboard
from batchlab.render.report import render_study
from batchlab.render.tables import render, study_table, validation_table
from batchlab.studies.arms import StudyName
from batchlab.studies.run import run_study
from batchlab.workloads import load_workload

study_app = typer.Typer(
    cls=Commands,
    no_args_is_help=True,
    help="Test a piece of large-batch folklore on your workload: a report and the numbers behind it.",
)

# The options every study shares.
Workload = Annotated[
    str,
    typer.Option("--workload", "-w", help="a built-in name, package.module:function, or file.py:function"),
]
Seed = Annotated[int, typer.Option("--seed", metavar="INT", parser=seed_number("--seed"))]
Epochs = Annotated[float | None, typer.Option("--epochs", help="training length of the base arms")]


def _out(study: StudyName) -> Any:
    return typer.Option(
        Path(f"batchlab-study-{study.value}"), "--out", help="folder for report.html, study.json"
    )


@guarded(resumable=True)
def lr_scaling(
    workload: Workload = "digits-cnn",
    epochs: Epochs = None,
    batch_sizes: str = typer.Option(None, "--batch-sizes", help="default 64,256,1024"),
    seed: Seed = 0,
    device: DeviceOpt = "auto",
    out: Path = _out(StudyName.LR_SCALING),
    tensorboard: TensorBoardOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Batches for the same epochs, the rate fixed, then scaled: do the curves line up (Goyal et al.)?"""
    options = {
        "epochs": epochs,
        "batch_sizes": parse_int_list(batch_sizes, "batch_sizes", flag="--batch-sizes"),
    }
    _study(StudyName.LR_SCALING, workload, options, seed, device, out, tensorboard, as_json)


@guarded(resumable=True)
def increase_batch(
    workload: Workload = "digits-cnn",
    epochs: Epochs = None,
    batch_size: int | None = int_option(None, "--batch-size", help="the first batch"),
    milestones: str = typer.Option(None, "--milestones", help="epochs (default 1/4, 1/2, 3/4)"),
    factor: float = typer.Option(None, "--factor", help="the fall of lr / batch at each (default 2)"),
    max_batch_size: int | None = int_option(None, "--max-batch-size", help="the memory cap"),
    seed: Seed = 0,
    device: DeviceOpt = "auto",
    out: Path = _out(StudyName.INCREASE_BATCH),
    tensorboard: TensorBoardOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A learning-rate decay's milestones, the batch grown instead (Smith et al. 2018)."""
    options = {
        "epochs": epochs,
        "batch_size": batch_size,
        "milestones": parse_int_list(milestones, "milestones", flag="--milestones"),
        "factor": factor,
        "max_batch_size": max_batch_size,
    }
    _study(StudyName.INCREASE_BATCH, workload, options, seed, device, out, tensorboard, as_json)


@guarded(resumable=True)
def generalization(
    workload: Workload = "digits-cnn",
    epochs: Epochs = None,
    small: int | None = int_option(None, "--small", help="the small batch"),
    large: int | None = int_option(None, "--large", help="the large batch"),
    ghost_batch_size: int | None = int_option(
        None, "--ghost-batch-size", help="ghost batch norm's virtual batch"
    ),
    seed: Seed = 0,
    device: DeviceOpt = "auto",
    out: Path = _out(StudyName.GENERALIZATION),
    tensorboard: TensorBoardOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Small against large batch: gap, sharpness (Keskar et al.); ghost BN, more updates (Hoffer et al.)."""
    options = {"epochs": epochs, "small": small, "large": large, "ghost_batch_size": ghost_batch_size}
    _study(StudyName.GENERALIZATION, workload, options, seed, device, out, tensorboard, as_json)


@guarded(resumable=True)
def noise_vs_batch(
    workload: Workload = "digits-cnn",
    draws: int | None = int_option(None, "--draws", help="batches drawn per size"),
    seed: Seed = 0,
    device: DeviceOpt = "auto",
    out: Path = _out(StudyName.NOISE_VS_BATCH),
    tensorboard: TensorBoardOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The batch gradient's spread against B, beside the law tr(Sigma)/B (N - B)/(N - 1)."""
    _study(StudyName.NOISE_VS_BATCH, workload, {"draws": draws}, seed, device, out, tensorboard, as_json)


@guarded(resumable=True)
def critical_batch(
    workload: Workload = "digits-cnn",
    batch_size: int | None = int_option(
        None, "--batch-size", help="the batch branched from (default: the reference)"
    ),
    max_batch_size: int | None = int_option(None, "--max-batch-size", help="the memory cap on the branches"),
    points: str = typer.Option(None, "--points", help="fractions of the steps to target (0.1,0.25,0.5,0.75)"),
    max_k: int | None = int_option(None, "--max-k", help="largest branch multiple"),
    epsilon: float = typer.Option(
        None, "--epsilon", help="share of the k=1 branch's progress a branch may lose"
    ),
    branch_examples: int | None = int_option(
        None, "--branch-examples", help="examples each branch trains on"
    ),
    advised_batch_size: int | None = int_option(
        None, "--advised-batch-size", help="a constant batch to validate too"
    ),
    branch_rates: str = typer.Option(
        None, "--branch-rates", help="both (the rule's rate and the other, keep the better) or rule"
    ),
    validation_seeds: int | None = int_option(
        None, "--validation-seeds", help="seeds the ramp is validated on (3)"
    ),
    branch_orders: int | None = int_option(
        None, "--branch-orders", help="data orders each branch trains on (2)"
    ),
    lr: float = typer.Option(
        None, "--lr", help="the batch's rate (default: the workload's, scaled, then tuned)"
    ),
    keep_lr: bool = typer.Option(
        False, "--keep-lr", help="the workload's rate scaled to the batch, not tuned"
    ),
    seed: Seed = 0,
    device: DeviceOpt = "auto",
    out: Path = _out(StudyName.CRITICAL_BATCH),
    tensorboard: TensorBoardOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The critical batch along training (branched, Merrill et al. 2025) and a batch ramp built from it."""
    options = {
        "batch_size": batch_size,
        "max_batch_size": max_batch_size,
        "points": parse_float_list(points, "points", flag="--points"),
        "max_k": max_k,
        "epsilon": epsilon,
        "branch_examples": branch_examples,
        "advised_batch_size": advised_batch_size,
        "branch_rates": branch_rates,
        "validation_seeds": validation_seeds,
        "branch_orders": branch_orders,
        "lr": lr,
        "tune_lr": False if keep_lr else None,
    }
    _study(StudyName.CRITICAL_BATCH, workload, options, seed, device, out, tensorboard, as_json)


for _command, _name in (
    (lr_scaling, StudyName.LR_SCALING),
    (increase_batch, StudyName.INCREASE_BATCH),
    (generalization, StudyName.GENERALIZATION),
    (noise_vs_batch, StudyName.NOISE_VS_BATCH),
    (critical_batch, StudyName.CRITICAL_BATCH),
):
    study_app.command(_name.value)(_command)


def _study(
    name: StudyName,
    workload: str,
    given: dict[str, Any],
    seed: int,
    device: str,
    folder: Path,
    tensorboard: Path | None,
    as_json: bool,
) -> None:
    """Run the study with the options given (the others keep the study's defaults); write its JSON,
    report and TensorBoard scalars; print its table and findings."""
    _tensorboard.check_available(tensorboard)
    options = {k: v for k, v in given.items() if v is not None}
    wl = load_workload(workload)
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
