"""The `batchlab` command: a thin shell. Each command parses, calls one library function, renders.

Progress goes to stderr; `--json` prints exactly one JSON object on stdout. Errors of batchlab's own
become one red line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from batchlab.core import dist as _dist
from batchlab.core import guard as _guard
from batchlab.core.json_safe import json_safe
from batchlab.core.precision import Precision
from batchlab.core.store import Store
from batchlab.core.units import format_number
from batchlab.errors import BatchlabError, bad
from batchlab.integrations import tensorboard as _tensorboard
from batchlab.lr import LrRule, rate_source
from batchlab.render.emit import Emit, trainer_settings
from batchlab.render.emit import render as render_settings
from batchlab.schedule import BatchSchedule, ScheduleMode
from batchlab.studies.study import StudyName

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Which batch size, and which learning rate to go with it: measured on your workload.",
)
F = TypeVar("F", bound=Callable[..., Any])

WORKLOAD_HELP = "a built-in name (see `batchlab workloads`), package.module:function, or file.py:function"
DEFAULT_WORKLOAD = "digits-mlp"

# Options that most commands share, declared once.
WorkloadOpt = Annotated[str, typer.Option("--workload", "-w", help=WORKLOAD_HELP)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object")]
TensorBoardOpt = Annotated[
    Path | None,
    typer.Option(
        "--tensorboard", help="also write loss, lr, batch size and noise scale as TensorBoard scalars here"
    ),
]
LimitOpt = Annotated[
    str | None, typer.Option("--memory-limit", help="e.g. 1.5GiB (default: what is available)")
]


def err_console(*, error: bool = False) -> Console:
    """stderr: under torchrun, ranks other than 0 print errors only."""
    return Console(stderr=True, quiet=not error and not _dist.is_main())


def fail(message: str, code: int = 2, *, label: str = "error:") -> typer.Exit:
    """One red line on stderr; the message is printed as it is (brackets in it are not markup)."""
    err_console(error=True).print(
        Text.assemble((label, "bold red"), " ", message), highlight=False, soft_wrap=True
    )
    return typer.Exit(code)


# Commands whose --out store keeps every finished run, so that the same command resumes.
RESUMABLE = {"train_command", "sweep_command", "study_command"}


def guarded(func: F | None = None, *, lock: bool = True) -> Any:
    """Every command runs inside this: it holds the output folder (`lock`), and turns batchlab's own
    errors, failures of the user's code or of the disk, and interrupts into one line and an exit
    code (2; 130 / 143 for SIGINT / SIGTERM; 1 for a bug of batchlab's), never a traceback. Under
    torchrun, a rank that lost its peers says so in one line too."""
    if func is None:
        return functools.partial(guarded, lock=lock)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        folder = output_folder(func.__name__, kwargs)
        command = _guard.command_line()
        try:
            with (
                _guard.folder_lock(folder, command) if lock and folder and _dist.is_main() else nullcontext()
            ):
                return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except (Exception, _guard.Interrupted, KeyboardInterrupt) as error:
            try:
                raise ending(error, func.__name__, command, folder) from None
            except RankStopped as late:
                # torchrun tells every rank to stop once one has failed; its SIGTERM may land while
                # this rank is still describing its own failure (a lost peer). The handler raises
                # once only, so the stop's line is the last word.
                raise ending(late, func.__name__, command, folder) from None

    return wrapper


def ending(error: BaseException, name: str, command: str, folder: Path | None) -> typer.Exit:
    """The one line, and the exit code, that a command's failure ends with."""
    if _dist.active():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's SIGTERM must not cut the line short
    if isinstance(error, BatchlabError):
        return fail(str(error))
    if isinstance(error, (_guard.Interrupted, KeyboardInterrupt)):
        stop = error if isinstance(error, _guard.Interrupted) else _guard.Interrupted(signal.SIGINT)
        line = _guard.interrupted_line(stop, command, folder, resumable=name in RESUMABLE)
        return fail(line, stop.exit_code, label="stopped:")
    if _dist.active() and (isinstance(error, RankStopped) or _dist.lost_peer(error)):
        return fail(
            f"rank {_dist.rank()}: another rank stopped ({str(error).splitlines()[0][:160]}); "
            "finished runs are in the store: run the same command again to resume"
        )
    return unexpected(error)


def unexpected(error: BaseException) -> typer.Exit:
    """A failure that is not batchlab's own check: the user's code, the disk, or a bug of ours."""
    line, code, shown = _guard.describe_failure(error, debug=DEBUG[0])
    if shown:
        err_console(error=True).print(shown, highlight=False, markup=False, soft_wrap=True)
    return fail(line, code)


def output_folder(command: str, kwargs: dict[str, Any]) -> Path | None:
    """The folder a command writes to (the study's default one included), or None."""
    out = kwargs.get("out")
    if command == "study_command" and out is None:
        return Path(f"batchlab-study-{kwargs['name'].value}")
    return out if isinstance(out, Path) else None


DEBUG = [False]  # set by --debug, anywhere on the command line


@app.callback()
def options(
    debug: bool = typer.Option(
        False, "--debug", help="when your workload's code fails, show its traceback (your frames)"
    ),
) -> None:
    """Which batch size, and which learning rate to go with it: measured on your workload."""
    DEBUG[0] = debug


class RankStopped(Exception):
    """torchrun asked this rank to stop, because another rank failed."""


def single_process(command: str) -> None:
    """Commands with nothing to run on several devices refuse torchrun in one line."""
    if _dist.env_world_size() > 1:
        raise bad(
            "torchrun",
            f"WORLD_SIZE={_dist.env_world_size()}",
            f"a single process for `batchlab {command}` (it measures nothing: it draws from a folder)",
            f"run `batchlab {command}` without torchrun",
        )


def open_store(out: Path | None) -> Store | None:
    """The results store, opened by rank 0 alone (the only rank that writes)."""
    return Store(out) if out is not None and _dist.is_main() else None


def parse_int(text: str | None, field: str, *, flag: str) -> int | None:
    """Parse an integer option ourselves, so a bad value gets batchlab's one-line error."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise bad(field, text, "a whole number", f"pass {flag} 32, say") from None


def parse_int_list(text: str | None, field: str, *, flag: str) -> list[int] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise bad(field, text, "comma-separated whole numbers", f"pass {flag} 8,32,128") from None
    if not values:
        raise bad(field, text, "at least one whole number", f"pass {flag} 8,32,128")
    return values


def parse_float_list(text: str | None, field: str, *, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise bad(field, text, "comma-separated numbers", f"pass {flag} 0.5,1,2") from None
    if not values:
        raise bad(field, text, "at least one number", f"pass {flag} 0.5,1,2")
    return values


def write_tensorboard(folder: Path | None, runs: list[tuple[str, list[dict[str, Any]]]]) -> None:
    if folder is not None and _dist.is_main():
        _tensorboard.write_runs(folder, runs)


def run_label(run: dict[str, Any]) -> str:
    """A run's TensorBoard folder: its batch, rate and seed."""
    return f"b{run['batch_size']}-lr{run['lr']:.4g}-seed{run['seed']}"


def advice_series(data: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """The advice's measurements as series: the reference run's noise history against its steps,
    and the predicted time to target against the batch size (TensorBoard's step axis)."""
    history = (data.get("noise") or {}).get("history") or []
    return {
        "b_simple": [(p["step"], p["b_simple"]) for p in history if p.get("b_simple") is not None],
        "train_loss": [(p["step"], p["train_loss"]) for p in history if p.get("train_loss") is not None],
        "predicted_seconds_to_target_by_batch": [
            (p["batch_size"], p["seconds_to_target"]) for p in data["predictions"]
        ],
        "predicted_steps_to_target_by_batch": [
            (p["batch_size"], p["steps_to_target"]) for p in data["predictions"]
        ],
    }


def emit_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(json_safe(data), indent=2) + "\n")


def write_json(out: Path | None, name: str, data: dict[str, Any]) -> None:
    if out is not None and _dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(json_safe(data), indent=2) + "\n")


def quiet(as_json: bool) -> bool:
    """Progress stays off with --json when stderr is not a terminal (a pipe, CI, a test). (On ranks
    other than 0, err_console is quiet already.)"""
    return as_json and not sys.stderr.isatty()


@contextmanager
def progress_bar(description: str, *, quiet: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr; yields a callback `update(done, total)`."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console(),
        transient=True,
        disable=quiet,
    )
    with bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format_number(value, digits)
    return str(value)


def render(table: Table) -> None:
    table.caption_justify = "left"  # captions are sentences: read from the left, not centred
    Console().print(table)


def show_result(data: dict[str, Any], table: Callable[[dict[str, Any]], Table], *, as_json: bool) -> None:
    """One JSON object on stdout with --json, else the rich table."""
    if as_json:
        emit_json(data)
    else:
        render(table(data))


# Commands ---------------------------------------------------------------------------------------


@app.command()
@guarded
def workloads(as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """List the built-in workloads."""
    from batchlab.workloads import BUILTINS

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


@app.command("train")
@guarded
def train_command(
    workload: WorkloadOpt = DEFAULT_WORKLOAD,
    batch_size: str = typer.Option(
        None, "--batch-size", "-b", metavar="INT", help="effective batch (default: the workload's reference)"
    ),
    lr: float = typer.Option(None, "--lr", help="learning rate (default: the rule applied to the reference)"),
    lr_rule: LrRule = typer.Option(
        LrRule.LINEAR, "--lr-rule", help="how the learning rate follows the batch"
    ),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="linear warm-up steps"),
    accumulation: str = typer.Option("1", "--accumulation", metavar="INT", help="micro-batches per step"),
    max_steps: str = typer.Option(None, "--max-steps", metavar="INT", help="step budget"),
    max_epochs: float = typer.Option(None, "--max-epochs", help="epoch budget"),
    until_target: bool = typer.Option(False, "--until-target", help="stop when the target is reached"),
    eval_every: str = typer.Option(
        None, "--eval-every", metavar="INT", help="evaluate every N steps (default: automatic)"
    ),
    track_noise: bool = typer.Option(False, "--track-noise", help="estimate the gradient noise scale"),
    precision: Precision = typer.Option(
        Precision.FP32, "--precision", help="autocast: fp32, bf16, fp16 (CUDA)"
    ),
    checkpoint: bool = typer.Option(False, "--checkpoint", help="recompute each of model.blocks in backward"),
    ghost_batch_size: str = typer.Option(
        None, "--ghost-batch-size", metavar="INT", help="ghost batch norm over virtual batches of this size"
    ),
    milestones: str = typer.Option(
        None, "--milestones", help="epochs where lr / batch falls by --factor, e.g. 10,20"
    ),
    factor: float = typer.Option(2.0, "--factor", help="the fall of lr / batch at each milestone"),
    schedule: ScheduleMode = typer.Option(
        ScheduleMode.INCREASE_BATCH, "--schedule", help="grow the batch (Smith et al.) or decay the lr"
    ),
    max_batch_size: str = typer.Option(
        None, "--max-batch-size", metavar="INT", help="the batch never grows past this (then the lr decays)"
    ),
    batch_schedule: Path = typer.Option(
        None,
        "--batch-schedule",
        metavar="FILE",
        help="a saved schedule, e.g. study critical-batch's ramp.json",
    ),
    sharpness: bool = typer.Option(False, "--sharpness", help="measure the final model's sharpness"),
    device: DeviceOpt = "auto",
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(None, "--out", help="folder for results.db and train.json"),
    tensorboard: TensorBoardOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train the workload once and show its curve and time to target."""
    from batchlab.train.record import recorded_train
    from batchlab.workload import load_workload

    _tensorboard.check_available(tensorboard)
    wl = load_workload(workload)
    size = parse_int(batch_size, "batch_size", flag="--batch-size")
    size = wl.batch_size if size is None else size
    batches: int | BatchSchedule = size
    if milestones is not None:
        batches = BatchSchedule.multistep(
            size,
            parse_int_list(milestones, "milestones", flag="--milestones") or [],
            factor,
            mode=schedule,
            max_batch_size=parse_int(max_batch_size, "max_batch_size", flag="--max-batch-size"),
        )
    elif max_batch_size is not None:
        raise bad("max_batch_size", max_batch_size, "used with --milestones", "add --milestones 10,20")
    if batch_schedule is not None:
        for flag, value in (("--milestones", milestones), ("--batch-size", batch_size)):
            if value is not None:
                raise bad(
                    flag, value, "left out with --batch-schedule (it names the batches)", f"drop {flag}"
                )
        batches = read_schedule(batch_schedule)
    settings = dict(
        batch_size=batches,
        lr=lr,
        lr_rule=lr_rule,
        warmup_steps=warmup_steps,
        accumulation=parse_int(accumulation, "accumulation", flag="--accumulation"),
        max_steps=parse_int(max_steps, "max_steps", flag="--max-steps"),
        max_epochs=max_epochs,
        until_target=until_target,
        eval_every=parse_int(eval_every, "eval_every", flag="--eval-every"),
        track_noise=track_noise,
        precision=precision,
        checkpoint=checkpoint,
        ghost_batch_size=parse_int(ghost_batch_size, "ghost_batch_size", flag="--ghost-batch-size"),
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


def read_schedule(path: Path) -> BatchSchedule:
    """A BatchSchedule saved as JSON (`to_dict`), or the error that says what is wrong with the file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise bad(
            "--batch-schedule", str(path), "an existing file", "pass the ramp.json a study wrote"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad(
            "--batch-schedule", str(path), "a JSON schedule", f"it could not be read: {error}"
        ) from None
    return BatchSchedule.from_dict(data)


def train_table(data: dict[str, Any]) -> Table:
    table = Table(
        title=f"{data['workload']}: batch {data['batch_size']}, lr {fmt(data['lr'])} ({data['lr_rule']})"
    )
    table.add_column("quantity")
    table.add_column("value", justify="right")
    target = data["target"]
    rows = [
        ("target", f"{target['metric']} {'<=' if target['mode'] == 'min' else '>='} {target['value']}"),
        ("reached", fmt(data["reached_target"])),
        ("steps to target", fmt(data["steps_to_target"])),
        ("examples to target", fmt(data["examples_to_target"])),
        ("seconds to target", fmt(data["seconds_to_target"], 3)),
        ("steps run", fmt(data["steps"])),
        ("final train loss", fmt(data["final_train_loss"])),
        ("final eval loss", fmt(data["final_eval_loss"])),
        ("diverged", fmt(data["diverged"])),
    ]
    rows += [(name, fmt(value)) for name, value in data["final_metrics"].items()]
    if data.get("noise"):
        rows.append(
            ("B_simple", f"{fmt(data['noise']['b_simple'], 3)} ± {fmt(data['noise']['b_simple_stderr'], 2)}")
        )
    if data.get("sharpness"):
        rows.append(("sharpness (top Hessian eigenvalue)", fmt(data["sharpness"]["top_eigenvalue"])))
        rows.append(("epsilon-sharpness", fmt(data["sharpness"]["epsilon_sharpness"])))
    for phase in (data.get("batch_schedule") or {}).get("phases", []):
        start = phase.get("start_examples")
        rows.append(
            (
                f"from epoch {phase['start_epoch']}" if start is None else f"from example {start:,}",
                f"batch {phase['batch_size']}, lr x {fmt(phase['lr_factor'], 3)}",
            )
        )
    for name, value in rows:
        table.add_row(name, value)
    return table


@app.command("memory")
@guarded
def memory_command(
    workload: WorkloadOpt = DEFAULT_WORKLOAD,
    device: DeviceOpt = "auto",
    memory_limit: LimitOpt = None,
    reserve: str = typer.Option(None, "--reserve", help="headroom kept free, e.g. 256MiB"),
    granularity: str = typer.Option("1", "--granularity", metavar="INT", help="answer a multiple of this"),
    min_batch_size: str = typer.Option("1", "--min-batch-size", metavar="INT"),
    max_batch_size: str = typer.Option(None, "--max-batch-size", metavar="INT"),
    no_eval: bool = typer.Option(False, "--no-eval", help="leave the evaluation forward out of a trial"),
    precision: Precision = typer.Option(
        Precision.FP32, "--precision", help="autocast: fp32, bf16, fp16 (CUDA)"
    ),
    checkpoint: bool = typer.Option(False, "--checkpoint", help="recompute each of model.blocks in backward"),
    strategies: bool = typer.Option(
        False, "--strategies", help="compare precision, checkpointing, accumulation"
    ),
    strategy_seconds: float = typer.Option(
        45.0,
        "--strategy-seconds",
        help="--strategies: time for each strategy's search; past it a row says 'at least N' (0: no limit)",
    ),
    out: Path = typer.Option(None, "--out", help="folder for results.db and memory.json"),
    as_json: JsonOpt = False,
) -> None:
    """Find the largest batch whose whole training step fits, exactly, in child processes."""
    from batchlab.core.units import format_bytes, parse_bytes
    from batchlab.measure.memory import MemoryTrial, probe_memory
    from batchlab.workload import load_workload

    wl = load_workload(workload)
    limit = None if memory_limit is None else parse_bytes(memory_limit, field="memory_limit")
    reserve_bytes = 0 if reserve is None else parse_bytes(reserve, field="reserve")
    console = err_console()

    def show(trial: MemoryTrial) -> None:
        if as_json:
            return
        verdict = "[green]fits[/]" if trial.fits else f"[red]does not fit[/] ({trial.error})"
        peak = "-" if trial.peak_bytes is None else format_bytes(trial.peak_bytes)
        label = "confirm" if trial.confirmation else "trial"
        console.print(
            f"{label} batch {trial.batch_size:>6}: {verdict}, peak {peak}, {trial.steps} steps, "
            f"{trial.seconds:.1f}s",
            highlight=False,
        )

    bounds: dict[str, Any] = {
        "granularity": parse_int(granularity, "granularity", flag="--granularity") or 0,
        "min_batch_size": parse_int(min_batch_size, "min_batch_size", flag="--min-batch-size") or 0,
        "max_batch_size": parse_int(max_batch_size, "max_batch_size", flag="--max-batch-size"),
        "include_eval": not no_eval,
    }
    if strategies:
        from batchlab.measure.strategies import compare_strategies

        if not strategy_seconds >= 0 or strategy_seconds == float("inf"):
            raise bad(
                "--strategy-seconds", strategy_seconds, "a finite number >= 0", "pass 45, or 0 for none"
            )
        for flag, given in (("--precision", precision is not Precision.FP32), ("--checkpoint", checkpoint)):
            if given:
                raise bad(
                    flag,
                    precision.value if flag == "--precision" else checkpoint,
                    "left out with --strategies, which tries every precision and checkpointing itself",
                    f"drop {flag}, or drop --strategies to probe that one setting",
                )
        report = compare_strategies(
            wl,
            device=device,
            limit_bytes=limit,
            reserve_bytes=reserve_bytes,
            seconds_per_strategy=strategy_seconds or None,
            progress=None if as_json else lambda text: console.print(text, style="bold"),
            on_trial=show,
            **bounds,
        )
        save(out, "strategies", wl.name, report.to_dict())
        show_result(report.to_dict(), strategies_table, as_json=as_json)
        return
    profile = probe_memory(
        wl,
        device=device,
        limit_bytes=limit,
        reserve_bytes=reserve_bytes,
        precision=precision.value,
        checkpoint=checkpoint,
        progress=show,
        **bounds,
    )
    data = profile.to_dict()
    save(out, "memory", wl.name, data)
    show_result(data, memory_table, as_json=as_json)


def strategies_table(data: dict[str, Any]) -> Table:
    from batchlab.core.units import format_bytes

    table = Table(
        title=f"{data['workload']} on {data['device']}: memory strategies, limit "
        f"{format_bytes(data['limit_bytes'])}"
    )
    for column in ("strategy", "largest batch", "per sample", "samples/s"):
        table.add_column(column, justify="right")
    table.add_column("note", justify="left", ratio=1)
    for r in data["strategies"]:
        per_sample = "-" if r["per_sample_bytes"] is None else format_bytes(r["per_sample_bytes"])
        largest = fmt(r["max_batch_size"])
        if r.get("is_lower_bound"):
            largest = f"at least {largest}"
        table.add_row(r["strategy"], largest, per_sample, fmt(r["samples_per_second"], 4), r["note"])
    table.caption = f"samples/s timed at batch {data['common_batch_size']} for every strategy"
    return table


def save(out: Path | None, kind: str, workload: str, data: dict[str, Any]) -> None:
    """Keep a whole result in DIR/results.db and DIR/<kind>.json."""
    if out is None or not _dist.is_main():
        return
    with Store(out) as store:
        store.save_result(kind, workload, data)
    write_json(out, f"{kind}.json", data)


def memory_table(data: dict[str, Any]) -> Table:
    from batchlab.core.units import format_bytes

    table = Table(title=f"{data['workload']} on {data['device']}: limit {format_bytes(data['limit_bytes'])}")
    for column in ("batch", "fits", "peak", "steps", "seconds"):
        table.add_column(column, justify="right")
    for t in data["trials"]:
        label = f"{t['batch_size']}" + (" (confirm)" if t["confirmation"] else "")
        fits = "yes" if t["fits"] else f"no: {t['error']}"
        peak = "-" if t["peak_bytes"] is None else format_bytes(t["peak_bytes"])
        table.add_row(label, fits, peak, str(t["steps"]), f"{t['seconds']:.1f}")
    answer = data["max_batch_size"]
    caption = [f"largest batch that fits: [bold]{answer if answer is not None else 'none'}[/]"]
    if data["capped_by_dataset"]:
        caption.append("(the whole training set: memory is not the limit)")
    world = data.get("world_size", 1)
    if world > 1 and answer is not None:
        caption.append(f"per device, on every one of {world} ranks: a global batch of {answer * world}")
    if data["per_sample_bytes"] is not None:
        caption.append(
            f"\nmemory model: {format_bytes(data['fixed_bytes'])} + "
            f"{format_bytes(data['per_sample_bytes'])} x B, {data['trial_count']} trials"
        )
    table.caption = " ".join(caption)
    return table


@app.command("throughput")
@guarded
def throughput_command(
    workload: WorkloadOpt = DEFAULT_WORKLOAD,
    batch_sizes: str = typer.Option(None, "--batch-sizes", help="e.g. 8,16,32 (default: powers of two)"),
    max_batch_size: str = typer.Option(None, "--max-batch-size", metavar="INT"),
    repeats: int = typer.Option(3, "--repeats", help="timed blocks per batch size (the median is kept)"),
    device: DeviceOpt = "auto",
    out: Path = typer.Option(None, "--out", help="folder for results.db and throughput.json"),
    as_json: JsonOpt = False,
) -> None:
    """Time whole training steps across batch sizes; find the knee where doubling stops paying."""
    from batchlab.measure.throughput import profile_throughput
    from batchlab.workload import load_workload

    wl = load_workload(workload)
    with progress_bar(f"timing {wl.name}", quiet=quiet(as_json)) as update:
        profile = profile_throughput(
            wl,
            batch_sizes=parse_int_list(batch_sizes, "batch_sizes", flag="--batch-sizes"),
            max_batch_size=parse_int(max_batch_size, "max_batch_size", flag="--max-batch-size"),
            repeats=repeats,
            device=device,
            progress=update,
        )
    data = profile.to_dict()
    save(out, "throughput", wl.name, data)
    show_result(data, throughput_table, as_json=as_json)


@app.command("noise")
@guarded
def noise_command(
    workload: WorkloadOpt = DEFAULT_WORKLOAD,
    batch_size: str = typer.Option(None, "--batch-size", "-b", metavar="INT", help="default: the reference"),
    micro_batches: str = typer.Option("4", "--micro-batches", metavar="INT", help="parts of each batch"),
    steps: str = typer.Option(None, "--steps", metavar="INT", help="training steps before the final pass"),
    lr: float = typer.Option(None, "--lr", help="learning rate (default: the reference rule)"),
    device: DeviceOpt = "auto",
    out: Path = typer.Option(None, "--out", help="folder for results.db and noise.json"),
    as_json: JsonOpt = False,
) -> None:
    """Measure the gradient noise scale B_simple while training, and precisely at the end."""
    from batchlab.measure.noise import measure_noise
    from batchlab.workload import load_workload

    wl = load_workload(workload)
    with progress_bar(f"measuring {wl.name}", quiet=quiet(as_json)) as update:
        estimate, _ = measure_noise(
            wl,
            batch_size=parse_int(batch_size, "batch_size", flag="--batch-size"),
            micro_batches=parse_int(micro_batches, "micro_batches", flag="--micro-batches") or 0,
            steps=parse_int(steps, "steps", flag="--steps"),
            lr=lr,
            device=device,
            progress=update,
        )
    data = estimate.to_dict()
    save(out, "noise", wl.name, data)
    show_result(data, noise_table, as_json=as_json)


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


@app.command("sweep")
@guarded
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
    max_steps: str = typer.Option(None, "--max-steps", metavar="INT", help="step budget per run"),
    max_epochs: float = typer.Option(None, "--max-epochs", help="epoch budget per run (default 100)"),
    sharpness: bool = typer.Option(
        True, "--sharpness/--no-sharpness", help="measure each final model's sharpness"
    ),
    device: DeviceOpt = "auto",
    out: Path = typer.Option(None, "--out", help="folder for results.db (resumable), sweep.json and plots"),
    tensorboard: TensorBoardOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train to the target at several batch sizes; fit steps = S_min (1 + B_crit / B)."""
    from batchlab.studies.sweep import run_sweep
    from batchlab.workload import load_workload

    _tensorboard.check_available(tensorboard)
    wl = load_workload(workload)
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
                seeds=parse_int_list(seeds, "seeds", flag="--seeds") or [],
                b_noise=b_noise,
                max_steps=parse_int(max_steps, "max_steps", flag="--max-steps"),
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
        from batchlab.render import plots

        (out / "sweep_loss.png").write_bytes(
            plots.loss_curves([r.to_dict() for r in result.best], data["target"])
        )
        (out / "sweep_steps.png").write_bytes(plots.steps_to_target(data["best"], data["fit"]))
    show_result(data, sweep_table, as_json=as_json)


def sweep_table(data: dict[str, Any]) -> Table:
    target = data["target"]
    table = Table(
        title=f"{data['workload']}: to {target['metric']} {'<=' if target['mode'] == 'min' else '>='} "
        f"{target['value']}, lr rule {data['lr_rule']}"
    )
    columns = (
        "batch",
        "lr",
        "seed",
        "steps",
        "examples",
        "seconds",
        "train loss",
        "eval loss",
        "gap",
        "sharpness",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for r in data["runs"]:
        steps = (
            "diverged"
            if r["diverged"]
            else fmt(r["steps_to_target"])
            if r["reached_target"]
            else "not reached"
        )
        table.add_row(
            str(r["batch_size"]),
            fmt(r["lr"], 3),
            str(r["seed"]),
            steps,
            fmt(r["examples_to_target"]),
            fmt(r["seconds_to_target"], 3),
            fmt(r["final_train_loss"], 3),
            fmt(r["final_eval_loss"], 3),
            fmt(r["generalization_gap"], 2),
            fmt(r["sharpness"], 3),
        )
    fit = data["fit"]
    if fit["ok"]:
        table.caption = (
            f"S(B) = {fit['s_min']:.3g} (1 + {fit['b_crit']:.3g} / B): B_crit = {fit['b_crit']:.3g} "
            f"(1 sigma {fit['b_crit_low']:.3g}..{fit['b_crit_high']:.3g}), E_min = {fit['e_min']:.3g}"
        )
    else:
        table.caption = f"no fit: {fit['reason']}"
    if fit.get("note"):
        table.caption += f"\nnote: {fit['note']}"
    return table


@app.command("advise")
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
        None, "--emit", help="also print the advice as torchrun, lightning or hf (Trainer) settings"
    ),
    devices: str = typer.Option(
        None, "--devices", metavar="INT", help="--emit: devices to split the batch over (default: 1)"
    ),
    schedule: bool = typer.Option(
        False, "--schedule", help="also measure the critical batch along training and offer a batch ramp"
    ),
    as_json: JsonOpt = False,
) -> None:
    """The main job: the batch size and learning rate to use, why, and the time it saves."""
    from batchlab.advise.pipeline import advise
    from batchlab.core.units import parse_bytes
    from batchlab.render.report import write_report
    from batchlab.workload import load_workload

    _tensorboard.check_available(tensorboard)
    device_count = parse_int(devices, "devices", flag="--devices") or 1
    if device_count < 1:
        raise bad("--devices", devices, "an integer >= 1", "pass --devices 8, say")
    wl = load_workload(workload)
    limit = None if memory_limit is None else parse_bytes(memory_limit, field="memory_limit")
    console = err_console()  # the spinner on rank 0 alone
    with console.status("", spinner="dots") as status:
        result = advise(
            wl,
            device=device,
            memory_limit=limit,
            budget_seconds=budget_seconds,
            validate=validate,
            full_memory=full_memory,
            progress=lambda text: status.update(f"[bold]{text}"),
        )
    data = result.to_dict()
    if schedule:
        data["schedule"] = advise_schedule(wl, data, out=out, device=device, console=console)
    cap = None if data["max_batch_size"] is None else data["max_batch_size"] // data["world_size"]
    try:  # (a --devices that does not divide the advised batch is said after the advice, not instead)
        settings = trainer_settings(data["batch_size"], data["lr"], devices=device_count, max_per_device=cap)
        data["trainer_settings"] = settings.to_dict()
        if emit is not None:
            data["emitted"] = {emit.value: render_settings(settings, emit, workload=wl.name, spec=wl.spec)}
    except BatchlabError as error:
        data["trainer_settings"], data["emitted"] = None, {"error": str(error)}
    save(out, "advice", wl.name, data)
    if tensorboard is not None and _dist.is_main():
        _tensorboard.write_series(tensorboard, f"{wl.name}-advice", advice_series(data))
    show_result(data, advice_table, as_json=as_json)
    if emit is not None and not as_json:
        text = data["emitted"].get(emit.value) or f"# no {emit.value} settings: {data['emitted']['error']}"
        Console().print(text, highlight=False, markup=False, soft_wrap=True)
    if _dist.is_main():
        console.print(f"report: [bold]{write_report(out)}[/]", highlight=False)


def advise_schedule(
    wl: Any, data: dict[str, Any], *, out: Path, device: str, console: Console
) -> dict[str, Any]:
    """`advise --schedule`: the ramp from the advised point, its runs kept in the store (resumable)."""
    from batchlab.studies.critical import schedule_advice

    store = open_store(out)
    try:
        with console.status("", spinner="dots") as status:
            return schedule_advice(
                wl,
                batch_size=data["batch_size"],
                lr=data["lr"],
                max_batch_size=data["max_batch_size"],
                cap_is_lower_bound=data["max_batch_size_is_lower_bound"],
                store=store,
                device=device,
                progress=lambda text: status.update(f"[bold]schedule: {text}"),
            )
    except BatchlabError as error:  # the advice itself stands: keep it, and say why there is no ramp
        return {"offered": False, "why": f"no ramp could be measured: {error}"}
    finally:
        if store is not None:
            store.close()


def advice_table(data: dict[str, Any]) -> Table:
    ref = data["reference"]
    table = Table(title=f"{data['workload']} on {data['device']}: advice")
    table.add_column("")
    table.add_column("advice", justify="right", style="bold green")
    table.add_column("reference", justify="right")
    table.add_row("batch size", str(data["batch_size"]), str(ref["batch_size"]))
    table.add_row("learning rate", f"{fmt(data['lr'], 3)} ({rate_source(data)})", fmt(ref["lr"], 3))
    table.add_row(
        "seconds to target",
        f"{fmt(data['predicted_seconds_to_target'], 3)} (predicted)",
        f"{fmt(ref['seconds_to_target'], 3)} (measured steps)",
    )
    spread = data.get("predicted_speedup_range")
    seeds = f"; seeds {fmt(spread[0], 2)}-{fmt(spread[1], 2)}x" if spread else ""
    table.add_row("speedup", f"{fmt(data['predicted_speedup'], 3)}x (predicted{seeds})", "1x")
    if data.get("measured_speedup") is not None:
        table.add_row("measured speedup", f"{fmt(data['measured_speedup'], 3)}x", "")
    fits = fmt(data["max_batch_size"])
    if data.get("max_batch_size_is_lower_bound"):
        fits = f"at least {fits} (probed no further)"
    table.add_row("largest batch that fits", fits, "")
    table.add_row("B_noise", fmt(data["b_noise"], 3), "")
    knee = fmt(data["knee_batch_size"])
    if data["knee_batch_size"] is None and (data.get("throughput") or {}).get("stopped_because"):
        from batchlab.measure.throughput import ThroughputProfile

        knee = f"unknown: timed up to batch {ThroughputProfile.from_dict(data['throughput']).largest_timed}"
    table.add_row("throughput knee", knee, "")
    if data.get("schedule"):
        plan = data["schedule"]
        ramp = " -> ".join(str(p["batch_size"]) for p in plan["ramp"]["phases"]) if plan.get("ramp") else "-"
        table.add_row("batch ramp", ramp if plan["offered"] else "not offered", "")
    lines = data["rationale"] + [f"note: {line}" for line in data["limitations"]]
    if data.get("schedule"):
        lines.append(f"schedule: {data['schedule']['why']}")
    table.caption = "\n".join(lines)
    return table


@app.command("report")
@guarded(lock=False)
def report_command(
    out: Path = typer.Argument(..., help="a folder written by advise, sweep, memory, ..."),
) -> None:
    """Write DIR/report.html from the results in DIR/results.db."""
    single_process("report")
    from batchlab.render.report import write_report

    if not (out / "results.db").is_file():
        raise bad("DIR", str(out), "a folder holding results.db", "run `batchlab advise --out DIR` first")
    err_console().print(f"report: [bold]{write_report(out)}[/]", highlight=False)


@app.command("study")
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
    from batchlab.render.report import render_study
    from batchlab.studies.study import STUDIES, run_study
    from batchlab.workload import load_workload

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


def study_table(data: dict[str, Any]) -> Table:
    table = Table(title=f"study {data['study']} on {data['workload']}: {data['question']}")
    keys = ["arm", "batch_size", "lr", "updates", "final_train_loss", "final_eval_loss", "generalization_gap"]
    if data["study"] == "noise-vs-batch":
        keys = ["batch_size", "spread", "law_spread", "ratio", "z"]
    if data["study"] == "critical-batch":
        keys = ["point", "step", "examples", "loss", "critical_batch", "b_simple", "b_simple_stderr"]
    for extra in ("curve_distance", "sharpness", "epsilon_sharpness"):
        if any(extra in r for r in data["rows"]):
            keys.append(extra)
    for key in keys:
        table.add_column(key.replace("_", " "), justify="left" if key == "arm" else "right")
    for row in data["rows"]:
        cells = [fmt(row.get(k), 3) for k in keys]
        if row.get("lower_bound"):  # every branch kept up: the critical batch is at least this
            cells[keys.index("critical_batch")] = ">= " + cells[keys.index("critical_batch")]
        table.add_row(*cells)
    return table


def validation_table(data: dict[str, Any]) -> Table:
    seeds = data["extra"]["validation"][0].get("seeds", 1)
    rows = data["extra"]["validation"]
    table = Table(
        title=f"the ramp against the constant batch ({seeds} seeds: median updates, examples and seconds "
        f"to target; mean final loss after {rows[0]['examples']:,} examples)"
    )
    columns = {  # short headers: seven columns fit in 80 characters
        "arm": "arm",
        "reached": "reached",
        "updates_to_target": "updates",
        "examples_to_target": "examples",
        "seconds_to_target": "seconds",
        "final_loss": "final loss",
        "final_loss_spread": "+- (sd)",
    }
    for key, header in columns.items():
        table.add_column(header, justify="left" if key == "arm" else "right")
    for row in rows:
        cells = [fmt(row.get(k), 4) for k in columns]
        cells[1] = f"{row.get('reached', '?')}/{row.get('seeds', 1)}"
        table.add_row(*cells)
    return table


def throughput_table(data: dict[str, Any]) -> Table:
    world = data.get("world_size", 1)
    where = f"{world} ranks" if world > 1 else data["device"]
    table = Table(title=f"{data['workload']} on {where}: whole training steps")
    columns = ["batch", "step ms", "min..max ms", "samples/s"]
    if world > 1:
        columns += ["per device", "one rank samples/s", "scaling efficiency"]
    for column in columns:
        table.add_column(column, justify="right")
    for p in data["points"]:
        if not p["fits"]:
            table.add_row(str(p["batch_size"]), "out of memory", *[""] * (len(columns) - 2))
            continue
        marker = " <- knee" if p["batch_size"] == data["knee_batch_size"] else ""
        cells = [
            f"{p['batch_size']}{marker}",
            f"{p['step_seconds'] * 1e3:.3f}",
            f"{p['step_seconds_min'] * 1e3:.3f}..{p['step_seconds_max'] * 1e3:.3f}",
            f"{p['samples_per_second']:,.0f}",
        ]
        if world > 1:
            cells += [
                str(p["batch_size"] // world),
                fmt(p["single_rank_samples_per_second"], 4),
                fmt(p["scaling_efficiency"], 3),
            ]
        table.add_row(*cells)
    table.caption = (
        f"knee: batch {data['knee_batch_size']} (doubling past it raises samples/s by "
        f"less than {data['knee_gain']:.0%})"
    )
    return table


def noise_table(data: dict[str, Any]) -> Table:
    table = Table(
        title=f"{data['workload']}: gradient noise scale at batch {data['batch_size']}, lr {fmt(data['lr'])}"
    )
    table.add_column("step", justify="right")
    table.add_column("train loss", justify="right")
    table.add_column("B_simple (running)", justify="right")
    history = data["history"]
    for p in history[:: max(1, len(history) // 12)]:
        table.add_row(str(p["step"]), fmt(p["train_loss"]), fmt(p["b_simple"], 3))
    table.caption = (
        f"at the final parameters ({data['measured_examples']} examples): B_simple = "
        f"{fmt(data['b_simple'], 4)} ± {fmt(data['b_simple_stderr'], 2)}  "
        f"(|G|^2 = {fmt(data['grad_sq'])}, tr(Sigma) = {fmt(data['trace_sigma'])})"
    )
    return table


def main() -> None:
    """The entry point. Under torchrun, join the process group first; ranks other than 0 print
    nothing on stdout, and a SIGTERM from torchrun (another rank failed) ends this one in one line."""
    if _dist.env_world_size() > 1:
        _dist.init_from_env()
        if not _dist.is_main():
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (kept for the life of the process)

        def stopped(signum: int, frame: Any) -> None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one would land mid-message
            raise RankStopped("stopped by torchrun")

        signal.signal(signal.SIGTERM, stopped)
    _guard.install_interrupt_handlers(sigterm=not _dist.active())
    if "--debug" in sys.argv[2:]:  # accepted after the command's name too
        sys.argv.remove("--debug")
        sys.argv.insert(1, "--debug")
    try:
        app()
    except _guard.Interrupted as stop:  # before a command began (while importing or parsing)
        fail(f"interrupted by {stop}", stop.exit_code, label="stopped:")
        sys.exit(stop.exit_code)
    except SystemExit as done:
        if not _dist.active():
            raise
        code = done.code if isinstance(done.code, int) else 0 if done.code is None else 1
        if code == 0:  # after an error the group may be broken: no barrier then
            _dist.finish()
        # Skip the interpreter's teardown: destroying gloo's and DDP's C++ objects at exit can abort
        # ("terminate called without an active exception") after all the work is done and printed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
