"""The training commands: workloads, train, sweep."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from batchlab.cli.options import (
    DEFAULT_WORKLOAD,
    ClipOpt,
    DeviceOpt,
    FinalLrOpt,
    HorizonOpt,
    HorizonTokensOpt,
    JsonOpt,
    LrScheduleOpt,
    TensorBoardOpt,
    WarmupExamplesOpt,
    WarmupTokensOpt,
    WorkloadOpt,
    emit_json,
    int_option,
    open_store,
    parse_float_list,
    parse_int_list,
    progress_bar,
    quiet,
    read_schedule,
    run_label,
    save,
    show_result,
    with_recipe,
    write_json,
    write_tensorboard,
)
from batchlab.cli.shell import err_console, guarded
from batchlab.cli.usage import seed_number
from batchlab.core import dist as _dist
from batchlab.core.precision import Precision
from batchlab.errors import bad, check_seed
from batchlab.integrations import tensorboard as _tensorboard
from batchlab.lr import LrRule
from batchlab.render import plots
from batchlab.render.tables import render, sweep_table, train_table
from batchlab.schedule import BatchSchedule, ScheduleMode
from batchlab.studies.sweep import run_sweep
from batchlab.train.record import recorded_train
from batchlab.workloads import BUILTINS, load_workload


@guarded
def workloads_command(as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """List the built-in workloads."""
    rows = [{"name": name, "summary": b.summary} for name, b in BUILTINS.items()]
    if as_json:
        emit_json({"workloads": rows})
        return
    table = Table(title="built-in workloads")
    table.add_column("name", style="bold")
    table.add_column("what it is")
    for row in rows:
        table.add_row(row["name"], row["summary"])
    render(table)


@guarded(resumable=True)
def train_command(
    workload: WorkloadOpt = DEFAULT_WORKLOAD,
    batch_size: int | None = int_option(
        None, "--batch-size", "-b", help="effective batch (default: the workload's reference)"
    ),
    lr: float = typer.Option(None, "--lr", help="learning rate (default: the rule applied to the reference)"),
    lr_rule: LrRule = typer.Option(
        LrRule.LINEAR, "--lr-rule", help="how the learning rate follows the batch"
    ),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="linear warm-up steps"),
    accumulation: int = int_option(1, "--accumulation", help="micro-batches per step"),
    max_steps: int | None = int_option(None, "--max-steps", help="step budget"),
    max_epochs: float = typer.Option(None, "--max-epochs", help="epoch budget"),
    max_examples: int | None = int_option(
        None, "--max-examples", help="example budget (a schedule's horizon)"
    ),
    max_tokens: int | None = int_option(None, "--max-tokens", help="token budget (with tokens_per_example)"),
    until_target: bool = typer.Option(False, "--until-target", help="stop when the target is reached"),
    eval_every: int | None = int_option(
        None, "--eval-every", help="evaluate every N steps (default: automatic)"
    ),
    lr_schedule: LrScheduleOpt = None,
    warmup_examples: WarmupExamplesOpt = None,
    final_lr_fraction: FinalLrOpt = None,
    horizon_examples: HorizonOpt = None,
    warmup_tokens: WarmupTokensOpt = None,
    horizon_tokens: HorizonTokensOpt = None,
    clip: ClipOpt = None,
    track_noise: bool = typer.Option(False, "--track-noise", help="estimate the gradient noise scale"),
    precision: Precision = typer.Option(
        Precision.FP32, "--precision", help="autocast: fp32, bf16, fp16 (CUDA)"
    ),
    checkpoint: bool = typer.Option(False, "--checkpoint", help="recompute each of model.blocks in backward"),
    ghost_batch_size: int | None = int_option(
        None, "--ghost-batch-size", help="ghost batch norm over virtual batches of this size"
    ),
    milestones: str = typer.Option(
        None, "--milestones", help="epochs where lr / batch falls by --factor, e.g. 10,20"
    ),
    factor: float = typer.Option(2.0, "--factor", help="the fall of lr / batch at each milestone"),
    schedule: ScheduleMode = typer.Option(
        ScheduleMode.INCREASE_BATCH, "--schedule", help="grow the batch (Smith et al.) or decay the lr"
    ),
    max_batch_size: int | None = int_option(
        None, "--max-batch-size", help="the batch never grows past this (then the lr decays)"
    ),
    batch_schedule: Path = typer.Option(
        None,
        "--batch-schedule",
        metavar="FILE",
        help="a saved schedule, e.g. study critical-batch's ramp.json",
    ),
    sharpness: bool = typer.Option(False, "--sharpness", help="measure the final model's sharpness"),
    device: DeviceOpt = "auto",
    seed: int = typer.Option(0, "--seed", metavar="INT", parser=seed_number("--seed")),
    out: Path = typer.Option(None, "--out", help="folder for results.db and train.json"),
    tensorboard: TensorBoardOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train the workload once and show its curve and time to target."""
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
    batches = _batches(
        wl.batch_size, batch_size, milestones, factor, schedule, max_batch_size, batch_schedule
    )
    settings = dict(
        batch_size=batches,
        lr=lr,
        lr_rule=lr_rule,
        warmup_steps=warmup_steps,
        accumulation=accumulation,
        max_steps=max_steps,
        max_epochs=max_epochs,
        max_examples=max_examples,
        max_tokens=max_tokens,
        until_target=until_target,
        eval_every=eval_every,
        track_noise=track_noise,
        precision=precision,
        checkpoint=checkpoint,
        ghost_batch_size=ghost_batch_size,
        sharpness=sharpness,
        seed=seed,
        device=device,
    )
    store = open_store(out)
    try:
        with progress_bar(f"training {wl.name}", quiet=quiet(as_json)) as update:
            result, _ = recorded_train(store, wl, kind="train", progress=update, **settings)
    finally:
        if store is not None:
            store.close()
    data = result.to_dict()
    write_json(out, "train.json", data)
    write_tensorboard(tensorboard, [(run_label(data), data["curve"])])
    show_result(data, train_table, as_json=as_json)


def _batches(
    reference: int,
    batch_size: int | None,
    milestones: str | None,
    factor: float,
    schedule: ScheduleMode,
    max_batch_size: int | None,
    batch_schedule: Path | None,
) -> int | BatchSchedule:
    """The run's batch: --batch-size (default the reference), stepped at --milestones, or a saved
    --batch-schedule."""
    size = reference if batch_size is None else batch_size
    batches: int | BatchSchedule = size
    if milestones is not None:
        steps = parse_int_list(milestones, "milestones", flag="--milestones") or []
        batches = BatchSchedule.multistep(size, steps, factor, mode=schedule, max_batch_size=max_batch_size)
    elif max_batch_size is not None:
        raise bad("max_batch_size", max_batch_size, "used with --milestones", "add --milestones 10,20")
    if batch_schedule is not None:
        for flag, value in (("--milestones", milestones), ("--batch-size", batch_size)):
            if value is not None:
                raise bad(
                    flag, value, "left out with --batch-schedule (it names the batches)", f"drop {flag}"
                )
        batches = read_schedule(batch_schedule)
    return batches


class _SweepBars:
    """Two progress bars on stderr: runs of the sweep, and steps within the current run."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.runs = bar.add_task("runs", total=None)
        self.steps = bar.add_task("steps", total=None)

    def run_started(self, index: int, total: int, label: str) -> None:
        self.bar.update(
            self.runs, completed=index, total=total, description=f"run {index + 1}/{total}: {label}"
        )
        self.bar.reset(self.steps, total=None)

    def step(self, done: int, total: int) -> None:
        self.bar.update(self.steps, completed=done, total=total)


@guarded(resumable=True)
def sweep_command(
    workload: WorkloadOpt = DEFAULT_WORKLOAD,
    batch_sizes: str = typer.Option("8,32,128,512", "--batch-sizes", help="comma-separated batch sizes"),
    lr_rule: LrRule = typer.Option(
        LrRule.LINEAR, "--lr-rule", help="how the learning rate follows the batch"
    ),
    lr_multipliers: str = typer.Option(
        "1", "--lr-multipliers", help="e.g. 0.5,1,2: the best is kept per batch"
    ),
    seeds: str = typer.Option("0", "--seeds", help="comma-separated seeds"),
    b_noise: float = typer.Option(None, "--b-noise", help="noise scale for --lr-rule noise"),
    max_steps: int | None = int_option(None, "--max-steps", help="step budget per run"),
    max_epochs: float = typer.Option(None, "--max-epochs", help="epoch budget per run (default 100)"),
    sharpness: bool = typer.Option(
        True, "--sharpness/--no-sharpness", help="measure each final model's sharpness"
    ),
    device: DeviceOpt = "auto",
    out: Path = typer.Option(None, "--out", help="folder for results.db (resumable), sweep.json and plots"),
    tensorboard: TensorBoardOpt = None,
    lr_schedule: LrScheduleOpt = None,
    warmup_examples: WarmupExamplesOpt = None,
    final_lr_fraction: FinalLrOpt = None,
    horizon_examples: HorizonOpt = None,
    warmup_tokens: WarmupTokensOpt = None,
    horizon_tokens: HorizonTokensOpt = None,
    clip: ClipOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train to the target at several batch sizes; fit steps = S_min (1 + B_crit / B)."""
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
    store = open_store(out)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console(),
        transient=True,
        disable=quiet(as_json),
    )
    try:
        with bar:
            result = run_sweep(
                wl,
                batch_sizes=parse_int_list(batch_sizes, "batch_sizes", flag="--batch-sizes") or [],
                lr_rule=lr_rule,
                lr_multipliers=parse_float_list(lr_multipliers, "lr_multipliers", flag="--lr-multipliers")
                or [],
                seeds=[
                    check_seed(s, field="seeds", fix="pass --seeds 0,1,2")
                    for s in parse_int_list(seeds, "seeds", flag="--seeds") or []
                ],
                b_noise=b_noise,
                max_steps=max_steps,
                max_epochs=max_epochs,
                sharpness=sharpness,
                store=store,
                device=device,
                progress=_SweepBars(bar),
            )
    finally:
        if store is not None:
            store.close()
    data = result.to_dict()
    save(out, "sweep", wl.name, data)
    write_tensorboard(tensorboard, [(run_label(r), r["curve"]) for r in data["runs"]])
    if out is not None and _dist.is_main():
        (out / "sweep_loss.png").write_bytes(
            plots.loss_curves([r.to_dict() for r in result.best], data["target"])
        )
        (out / "sweep_steps.png").write_bytes(plots.steps_to_target(data["best"], data["fit"]))
    show_result(data, sweep_table, as_json=as_json)
