"""The `batchlab` command: a thin shell. Each command parses, calls one library function, renders.

Progress goes to stderr; `--json` prints exactly one JSON object on stdout. Errors of batchlab's own
become one red line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._errors import BatchlabError, bad
from ._json import json_safe
from .lr import LrRule

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Which batch size, and which learning rate to go with it: measured on your workload.",
)
F = TypeVar("F", bound=Callable[..., Any])

WORKLOAD_HELP = "a built-in name (see `batchlab workloads`), package.module:function, or file.py:function"
DEFAULT_WORKLOAD = "digits-mlp"


def err_console() -> Console:
    return Console(stderr=True)


def guarded(func: F) -> F:
    """Turn batchlab's own errors into one red line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BatchlabError as error:
            err_console().print(f"[bold red]error:[/] {error}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


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


def emit_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(json_safe(data), indent=2) + "\n")


def write_json(out: Path | None, name: str, data: dict[str, Any]) -> None:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(json_safe(data), indent=2) + "\n")


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
        return f"{value:.{digits}g}"
    return str(value)


def render(table: Table) -> None:
    Console().print(table)


# Commands ---------------------------------------------------------------------------------------


@app.command()
@guarded
def workloads(as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """List the built-in workloads."""
    from .workloads import BUILTINS

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
    workload: str = typer.Option(DEFAULT_WORKLOAD, "--workload", "-w", help=WORKLOAD_HELP),
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
    track_noise: bool = typer.Option(False, "--track-noise", help="estimate the gradient noise scale"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(None, "--out", help="folder for results.db and train.json"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Train the workload once and show its curve and time to target."""
    from ._record import recorded_train
    from .store import Store
    from .workload import load_workload

    wl = load_workload(workload)
    size = parse_int(batch_size, "batch_size", flag="--batch-size")
    settings = dict(
        batch_size=wl.batch_size if size is None else size,
        lr=lr,
        lr_rule=lr_rule,
        warmup_steps=warmup_steps,
        accumulation=parse_int(accumulation, "accumulation", flag="--accumulation"),
        max_steps=parse_int(max_steps, "max_steps", flag="--max-steps"),
        max_epochs=max_epochs,
        until_target=until_target,
        track_noise=track_noise,
        seed=seed,
        device=device,
    )
    store = Store(out) if out is not None else None
    try:
        with progress_bar(f"training {wl.name}", quiet=as_json and not sys.stderr.isatty()) as update:
            result, _ = recorded_train(store, wl, kind="train", progress=update, **settings)
    finally:
        if store is not None:
            store.close()
    data = result.to_dict()
    write_json(out, "train.json", data)
    if as_json:
        emit_json(data)
        return
    render(train_table(data))


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
    for name, value in rows:
        table.add_row(name, value)
    return table


def main() -> None:
    app()
