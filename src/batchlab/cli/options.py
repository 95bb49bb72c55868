"""What the commands share: their common options, and writing results (JSON, the store, TensorBoard)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from batchlab.cli.shell import err_console, json_stdout
from batchlab.cli.usage import whole_number
from batchlab.core import dist as _dist
from batchlab.core.json_safe import json_safe
from batchlab.core.progress import Steps
from batchlab.core.store import Store
from batchlab.errors import bad
from batchlab.integrations import tensorboard as _tensorboard
from batchlab.recipe import Decay, LrSchedule
from batchlab.render.tables import render
from batchlab.schedule import BatchSchedule
from batchlab.workload import Workload

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


# The recipe beyond the workload's own (`with_recipe`).
LrScheduleOpt = Annotated[
    Decay | None,
    typer.Option(
        "--lr-schedule",
        help="the rate after warm-up: constant, cosine, linear, wsd (default: the workload's)",
    ),
]
WarmupExamplesOpt = Annotated[
    int | None,
    typer.Option(
        "--warmup-examples",
        metavar="INT",
        parser=whole_number("--warmup-examples"),
        help="linear warm-up over this many examples (with --lr-schedule)",
    ),
]
FinalLrOpt = Annotated[
    float | None,
    typer.Option("--final-lr-fraction", help="where the decay ends, a fraction of the peak rate"),
]
HorizonOpt = Annotated[
    int | None,
    typer.Option(
        "--horizon-examples",
        metavar="INT",
        parser=whole_number("--horizon-examples"),
        help="the examples the decay spans (default: the run's length; a run to the target holds the peak)",
    ),
]
WarmupTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--warmup-tokens", metavar="INT", parser=whole_number("--warmup-tokens"), help="the warm-up in tokens"
    ),
]
HorizonTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--horizon-tokens",
        metavar="INT",
        parser=whole_number("--horizon-tokens"),
        help="the horizon in tokens",
    ),
]
ClipOpt = Annotated[float | None, typer.Option("--clip", help="clip each step's gradient norm to this")]


def open_store(out: Path | None) -> Store | None:
    """The results store, opened by rank 0 alone (the only rank that writes)."""
    return Store(out) if out is not None and _dist.is_main() else None


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


def emit_json(data: dict[str, Any]) -> None:
    out = json_stdout()
    out.write(json.dumps(json_safe(data), indent=2) + "\n")
    out.flush()


def write_json(out: Path | None, name: str, data: dict[str, Any]) -> None:
    if out is not None and _dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(json_safe(data), indent=2) + "\n")


def quiet(as_json: bool) -> bool:
    """Progress stays off with --json when stderr is not a terminal (a pipe, CI, a test). (On ranks
    other than 0, err_console is quiet already.)"""
    return as_json and not sys.stderr.isatty()


@contextmanager
def progress_bar(description: str, *, quiet: bool = False) -> Iterator[Steps]:
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


def show_result(data: dict[str, Any], table: Callable[[dict[str, Any]], Table], *, as_json: bool) -> None:
    """One JSON object on stdout with --json, else the rich table."""
    if as_json:
        emit_json(data)
    else:
        render(table(data))


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


def save(out: Path | None, kind: str, workload: str, data: dict[str, Any]) -> None:
    """Keep a whole result in DIR/results.db and DIR/<kind>.json."""
    if out is None or not _dist.is_main():
        return
    with Store(out) as store:
        store.save_result(kind, workload, data)
    write_json(out, f"{kind}.json", data)


def int_option(default: int | None, *flags: str, help: str | None = None) -> Any:
    """An integer option: a value that is not a whole number gets batchlab's one-line error."""
    return typer.Option(default, *flags, metavar="INT", help=help, parser=whole_number(flags[0]))


def _examples(workload: Workload, examples: int | None, tokens: int | None, name: str) -> int | None:
    """A length given in examples or in tokens (not both), in examples."""
    if tokens is None:
        return examples
    if examples is not None:
        raise bad(f"{name}_tokens", tokens, f"left out when --{name}-examples is given", "give one of them")
    return workload.examples_in_tokens(tokens, field=f"{name}_tokens")


def with_recipe(
    workload: Workload,
    decay: Decay | None,
    warmup_examples: int | None,
    final_fraction: float | None,
    clip: float | None,
    horizon_examples: int | None = None,
    *,
    warmup_tokens: int | None = None,
    horizon_tokens: int | None = None,
) -> Workload:
    """The workload with the recipe the options give: a schedule from --lr-schedule (its warm-up,
    floor and horizon with it, lengths in examples or in tokens), a clip from --clip; what they
    leave out stays the workload's own."""
    warmup_examples = _examples(workload, warmup_examples, warmup_tokens, "warmup")
    horizon_examples = _examples(workload, horizon_examples, horizon_tokens, "horizon")
    if decay is None:
        given = (
            ("--warmup-examples", warmup_examples),
            ("--final-lr-fraction", final_fraction),
            ("--horizon-examples", horizon_examples),
        )
        for flag, value in given:
            if value is not None:
                raise bad(
                    flag.lstrip("-").replace("-", "_"),
                    value,
                    "used with --lr-schedule",
                    "add --lr-schedule cosine",
                )
    else:
        workload = replace(
            workload,
            schedule=LrSchedule(
                decay=decay,
                warmup_examples=warmup_examples or 0,
                final_fraction=final_fraction or 0.0,
                horizon_examples=horizon_examples,
            ),
        )
    return workload if clip is None else replace(workload, clip_grad_norm=clip)
