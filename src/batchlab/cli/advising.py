"""The advice command, and report over a folder of results."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from batchlab.advise.emit import Emit
from batchlab.advise.pipeline import advise
from batchlab.cli.options import (
    DEFAULT_WORKLOAD,
    ClipOpt,
    DeviceOpt,
    FinalLrOpt,
    HorizonOpt,
    HorizonTokensOpt,
    JsonOpt,
    LimitOpt,
    LrScheduleOpt,
    TensorBoardOpt,
    WarmupExamplesOpt,
    WarmupTokensOpt,
    WorkloadOpt,
    int_option,
    open_store,
    save,
    show_result,
    with_recipe,
)
from batchlab.cli.shell import err_console, guarded, single_process
from batchlab.core import dist as _dist
from batchlab.core.units import parse_bytes
from batchlab.errors import bad
from batchlab.integrations import tensorboard as _tensorboard
from batchlab.integrations.tensorboard import advice_series
from batchlab.render.report import write_report
from batchlab.render.tables import advice_table
from batchlab.workloads import load_workload


@guarded
def advise_command(
    workload: WorkloadOpt = DEFAULT_WORKLOAD,
    device: DeviceOpt = "auto",
    memory_limit: LimitOpt = None,
    budget_seconds: float = typer.Option(None, "--budget-seconds", help="stop measuring after this long"),
    validate: bool = typer.Option(
        False, "--validate", help="train the advice and the reference to the target"
    ),
    full_memory: bool = typer.Option(
        False,
        "--full-memory",
        help="probe memory to the edge, not only up to the largest batch the prediction could choose",
    ),
    out: Path = typer.Option(
        Path("batchlab-out"), "--out", help="folder for report.html, advice.json, results.db"
    ),
    tensorboard: TensorBoardOpt = None,
    emit: Emit = typer.Option(
        None,
        "--emit",
        help="also print the advice as torchrun, lightning, hf (Trainer) or plain (JSON) settings",
    ),
    devices: int = int_option(1, "--devices", help="--emit: devices to split the batch over (default: 1)"),
    schedule: bool = typer.Option(
        False, "--schedule", help="also measure the critical batch along training and offer a batch ramp"
    ),
    lr_schedule: LrScheduleOpt = None,
    warmup_examples: WarmupExamplesOpt = None,
    final_lr_fraction: FinalLrOpt = None,
    horizon_examples: HorizonOpt = None,
    warmup_tokens: WarmupTokensOpt = None,
    horizon_tokens: HorizonTokensOpt = None,
    clip: ClipOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The main job: the batch size and learning rate to use, why, and the time it saves."""
    _tensorboard.check_available(tensorboard)
    wl = with_recipe(
        load_workload(workload),
        lr_schedule,
        warmup_examples,
        final_lr_fraction,
        clip,
        horizon_examples,
        warmup_tokens=warmup_tokens,
        horizon_tokens=horizon_tokens,
    )
    limit = None if memory_limit is None else parse_bytes(memory_limit, field="memory_limit")
    console = err_console()  # the spinner on rank 0 alone
    store = open_store(out) if schedule else None  # the ramp's runs, kept so that it resumes
    try:
        with console.status("", spinner="dots") as status:
            result = advise(
                wl,
                device=device,
                memory_limit=limit,
                budget_seconds=budget_seconds,
                validate=validate,
                full_memory=full_memory,
                schedule=schedule,
                devices=devices,
                emit=emit,
                store=store,
                progress=lambda text: status.update(f"[bold]{text}"),
            )
    finally:
        if store is not None:
            store.close()
    data = result.to_dict()
    save(out, "advice", wl.name, data)
    if tensorboard is not None and _dist.is_main():
        _tensorboard.write_series(tensorboard, f"{wl.name}-advice", advice_series(data))
    show_result(data, advice_table, as_json=as_json)
    if emit is not None and not as_json:
        emitted = data["emitted"] or {}
        text = emitted.get(emit.value) or f"# no {emit.value} settings: {emitted.get('error')}"
        Console().print(text, highlight=False, markup=False, soft_wrap=True)
    if _dist.is_main():
        console.print(f"report: [bold]{write_report(out)}[/]", highlight=False)


@guarded(lock=False)
def report_command(
    out: Path = typer.Argument(..., help="a folder written by advise, sweep, memory, ..."),
) -> None:
    """Write DIR/report.html from the results in DIR/results.db."""
    single_process("report")

    if not (out / "results.db").is_file():
        raise bad("DIR", str(out), "a folder holding results.db", "run `batchlab advise --out DIR` first")
    err_console().print(f"report: [bold]{write_report(out)}[/]", highlight=False)
