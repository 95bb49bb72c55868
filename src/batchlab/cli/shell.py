"""The shell every command runs in: the typer app, one line for every way a command can fail,
signals, and torchrun's ranks.

Errors of batchlab's own become one red line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TextIO, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from batchlab.cli.usage import Commands
from batchlab.core import dist as _dist
from batchlab.core import guard as _guard
from batchlab.errors import BatchlabError, bad

app = typer.Typer(
    cls=Commands,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Which batch size, and which learning rate to go with it: measured on your workload.",
)


F = TypeVar("F", bound=Callable[..., Any])


def err_console(*, error: bool = False) -> Console:
    """stderr: under torchrun, ranks other than 0 print errors only."""
    return Console(stderr=True, quiet=not error and not _dist.is_main())


def fail(message: str, code: int = 2, *, label: str = "error:") -> typer.Exit:
    """One red line on stderr; the message is printed as it is (brackets in it are not markup)."""
    err_console(error=True).print(
        Text.assemble((label, "bold red"), " ", message), highlight=False, soft_wrap=True
    )
    return typer.Exit(code)


def guarded(func: F | None = None, *, lock: bool = True, resumable: bool = False) -> Any:
    """Every command runs inside this: it holds the output folder (`lock`), and turns batchlab's own
    errors, failures of the user's code or of the disk, and interrupts into one line and an exit
    code (2; 130 / 143 for SIGINT / SIGTERM; 1 for a bug of batchlab's), never a traceback. Under
    torchrun, a rank that lost its peers says so in one line too. A `resumable` command's --out
    store keeps every finished run, so that the same command resumes: its stop says so."""
    if func is None:
        return functools.partial(guarded, lock=lock, resumable=resumable)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        folder = out if isinstance(out, Path) else None
        json_only = kwargs.get("as_json", False) is True
        command = _guard.command_line()
        try:
            with (
                _guard.folder_lock(folder, command) if lock and folder and _dist.is_main() else nullcontext(),
                stdout_for_json(json_only),
            ):
                return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except (Exception, _guard.Interrupted, KeyboardInterrupt) as error:
            try:
                raise ending(error, resumable, command, folder) from None
            except RankStopped as late:
                # torchrun tells every rank to stop once one has failed; its SIGTERM may land while
                # this rank is still describing its own failure (a lost peer). The handler raises
                # once only, so the stop's line is the last word.
                raise ending(late, resumable, command, folder) from None

    return wrapper


_JSON_STDOUT: list[TextIO] = []  # under --json, where the one object goes (the real stdout)


@contextmanager
def stdout_for_json(active: bool) -> Iterator[None]:
    """Under --json, stdout carries the one JSON object and nothing else: whatever the user's code
    writes there while the command runs (a model that prints its size, a progress bar, a child
    process) goes to stderr, at the file descriptor where there is one. `json_stdout` is where the
    object goes."""
    if not active:
        yield
        return
    real = sys.stdout
    real.flush()
    try:
        fd, err = real.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stream (a test's runner)
        fd = err = -1
    saved = os.dup(fd) if fd >= 0 else -1
    if saved >= 0:
        os.dup2(err, fd)  # C code and child processes write to the descriptor, not to sys.stdout
    _JSON_STDOUT.append(os.fdopen(saved, "w", closefd=False) if saved >= 0 else real)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = real
        _JSON_STDOUT.pop().flush()
        if saved >= 0:
            os.dup2(saved, fd)
            os.close(saved)


def json_stdout() -> TextIO:
    """Where a command's one JSON object goes: stdout, as it was before the command ran."""
    return _JSON_STDOUT[-1] if _JSON_STDOUT else sys.stdout


def ending(error: BaseException, resumable: bool, command: str, folder: Path | None) -> typer.Exit:
    """The one line, and the exit code, that a command's failure ends with."""
    if _dist.active():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's SIGTERM must not cut the line short
    if isinstance(error, BatchlabError):
        return fail(str(error))
    if isinstance(error, (_guard.Interrupted, KeyboardInterrupt)):
        stop = error if isinstance(error, _guard.Interrupted) else _guard.Interrupted(signal.SIGINT)
        line = _guard.interrupted_line(stop, command, folder, resumable=resumable)
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
