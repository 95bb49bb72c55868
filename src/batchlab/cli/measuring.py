"""The measuring commands: memory (and its strategies), throughput, noise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from batchlab.cli.options import (
    DEFAULT_WORKLOAD,
    DeviceOpt,
    JsonOpt,
    LimitOpt,
    WorkloadOpt,
    int_option,
    parse_int_list,
    progress_bar,
    quiet,
    save,
    show_result,
)
from batchlab.cli.shell import err_console, guarded
from batchlab.core.precision import Precision
from batchlab.core.units import format_bytes, parse_bytes
from batchlab.errors import bad
from batchlab.measure.memory import probe_memory
from batchlab.measure.memory_trial import MemoryTrial
from batchlab.measure.noise import measure_noise
from batchlab.measure.strategies import compare_strategies
from batchlab.measure.throughput import profile_throughput
from batchlab.render.tables import memory_table, noise_table, strategies_table, throughput_table
from batchlab.workloads import load_workload


@guarded
def memory_command(
    workload: WorkloadOpt = DEFAULT_WORKLOAD,
    device: DeviceOpt = "auto",
    memory_limit: LimitOpt = None,
    reserve: str = typer.Option(None, "--reserve", help="headroom kept free, e.g. 256MiB"),
    granularity: int = int_option(1, "--granularity", help="answer a multiple of this"),
    min_batch_size: int = int_option(1, "--min-batch-size"),
    max_batch_size: int | None = int_option(None, "--max-batch-size"),
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
    wl = load_workload(workload)
    limit = None if memory_limit is None else parse_bytes(memory_limit, field="memory_limit")
    reserve_bytes = 0 if reserve is None else parse_bytes(reserve, field="reserve")
    console = err_console()
    show = _trial_line(console, quiet=as_json)
    bounds: dict[str, Any] = {
        "granularity": granularity,
        "min_batch_size": min_batch_size,
        "max_batch_size": max_batch_size,
        "include_eval": not no_eval,
    }
    if strategies:
        _check_strategies(strategy_seconds, precision, checkpoint)
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


def _trial_line(console: Console, *, quiet: bool) -> Callable[[MemoryTrial], None]:
    """Each memory trial as it finishes, one line on stderr (none with --json)."""

    def show(trial: MemoryTrial) -> None:
        if quiet:
            return
        verdict = "[green]fits[/]" if trial.fits else f"[red]does not fit[/] ({trial.error})"
        peak = "-" if trial.peak_bytes is None else format_bytes(trial.peak_bytes)
        label = "confirm" if trial.confirmation else "trial"
        console.print(
            f"{label} batch {trial.batch_size:>6}: {verdict}, peak {peak}, {trial.steps} steps, "
            f"{trial.seconds:.1f}s",
            highlight=False,
        )

    return show


def _check_strategies(strategy_seconds: float, precision: Precision, checkpoint: bool) -> None:
    """--strategies tries every precision and checkpointing itself: neither may be given beside it."""
    if not strategy_seconds >= 0 or strategy_seconds == float("inf"):
        raise bad("--strategy-seconds", strategy_seconds, "a finite number >= 0", "pass 45, or 0 for none")
    for flag, given in (("--precision", precision is not Precision.FP32), ("--checkpoint", checkpoint)):
        if given:
            raise bad(
                flag,
                precision.value if flag == "--precision" else checkpoint,
                "left out with --strategies, which tries every precision and checkpointing itself",
                f"drop {flag}, or drop --strategies to probe that one setting",
            )


@guarded
def throughput_command(
    workload: WorkloadOpt = DEFAULT_WORKLOAD,
    batch_sizes: str = typer.Option(None, "--batch-sizes", help="e.g. 8,16,32 (default: powers of two)"),
    max_batch_size: int | None = int_option(None, "--max-batch-size"),
    repeats: int = typer.Option(3, "--repeats", help="timed blocks per batch size (the median is kept)"),
    device: DeviceOpt = "auto",
    out: Path = typer.Option(None, "--out", help="folder for results.db and throughput.json"),
    as_json: JsonOpt = False,
) -> None:
    """Time whole training steps across batch sizes; find the knee where doubling stops paying."""
    wl = load_workload(workload)
    with progress_bar(f"timing {wl.name}", quiet=quiet(as_json)) as update:
        profile = profile_throughput(
            wl,
            batch_sizes=parse_int_list(batch_sizes, "batch_sizes", flag="--batch-sizes"),
            max_batch_size=max_batch_size,
            repeats=repeats,
            device=device,
            progress=update,
        )
    data = profile.to_dict()
    save(out, "throughput", wl.name, data)
    show_result(data, throughput_table, as_json=as_json)


@guarded
def noise_command(
    workload: WorkloadOpt = DEFAULT_WORKLOAD,
    batch_size: int | None = int_option(None, "--batch-size", "-b", help="default: the reference"),
    micro_batches: int = int_option(4, "--micro-batches", help="parts of each batch"),
    steps: int | None = int_option(None, "--steps", help="training steps before the final pass"),
    lr: float = typer.Option(None, "--lr", help="learning rate (default: the reference rule)"),
    max_examples: int | None = int_option(
        None,
        "--max-examples",
        help="examples in the final pass (default: the training set; a stream's: as trained)",
    ),
    device: DeviceOpt = "auto",
    out: Path = typer.Option(None, "--out", help="folder for results.db and noise.json"),
    as_json: JsonOpt = False,
) -> None:
    """Measure the gradient noise scale B_simple while training, and precisely at the end."""
    wl = load_workload(workload)
    with progress_bar(f"measuring {wl.name}", quiet=quiet(as_json)) as update:
        estimate, _ = measure_noise(
            wl,
            batch_size=batch_size,
            micro_batches=micro_batches,
            steps=steps,
            lr=lr,
            device=device,
            max_examples=max_examples,
            progress=update,
        )
    data = estimate.to_dict()
    save(out, "noise", wl.name, data)
    show_result(data, noise_table, as_json=as_json)
