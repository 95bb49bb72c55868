"""What stands between a command and the person who ran it: interrupts, the lock on an output
folder, and one line for every way a command can fail that batchlab's own checks do not catch.

- SIGINT and SIGTERM raise `Interrupted` where the program is: the step in hand is dropped (a run
  left unfinished restarts whole next time), `finally` blocks close the store and stop child
  processes, and the command prints one line and exits 128 + the signal (130, 143). A second signal
  exits at once, with one line and no traceback.
- An output folder is held by one command at a time: `folder_lock` takes an advisory lock on
  DIR/.batchlab.lock (the kernel drops it when its holder dies, even by SIGKILL, so it is never
  stale) and a second command on the same folder is refused with the holder's pid and command line.
- An exception that is not batchlab's own is described in one line: the user's code (a frame in a
  workload's file or module), the disk (a full disk, a read-only folder), or, with none of these, a
  bug in batchlab. `--debug` adds the user's own traceback frames.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType

from batchlab.errors import BatchlabError, bad

LOCK_NAME = ".batchlab.lock"
SIGNAL_NAMES: dict[int, str] = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` in a user's code or ours swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(SIGNAL_NAMES.get(signum, f"signal {signum}"))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def install_interrupt_handlers(*, sigterm: bool = True) -> None:
    """SIGINT (and SIGTERM unless `sigterm` is False: torchrun's own use of it is handled apart)
    raise `Interrupted` once; a second signal ends the process at once."""

    def first(signum: int, frame: FrameType | None) -> None:
        for other in handled:
            signal.signal(other, second)
        raise Interrupted(signum)

    def second(signum: int, frame: FrameType | None) -> None:
        os.write(2, f"\nbatchlab: {SIGNAL_NAMES.get(signum, signum)} again: stopped at once\n".encode())
        os._exit(128 + signum)

    handled = [signal.SIGINT] + ([signal.SIGTERM] if sigterm else [])
    for signum in handled:
        signal.signal(signum, first)


# The output folder's lock ------------------------------------------------------------------------

_held: dict[Path, list[int]] = {}  # folder -> [file descriptor, holders in this process]


@contextmanager
def folder_lock(folder: Path, command: str) -> Iterator[None]:
    """Hold `folder` for this process; re-entrant within it. Refuse, in one line, a folder that
    another live process holds."""
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): SQLite's own locking still keeps the store whole
        yield
        return
    if folder.exists() and not folder.is_dir():
        raise bad("--out", str(folder), "a folder, not a file", "pass a folder's path (created if missing)")
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = os.read(fd, 4096).decode(errors="replace")
        os.close(fd)
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise BatchlabError(
            f"{folder} is in use by {_describe_holder(holder)}; wait for it to finish, or pass another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "command": command, "started": time.time()}).encode())
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            del _held[key]
            os.close(fd)  # closing the last descriptor releases the lock


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        started = time.strftime("%H:%M:%S", time.localtime(holder["started"]))
        return f"pid {holder['pid']} (`{holder['command']}`, since {started})"
    except (ValueError, KeyError, TypeError):
        return "another batchlab process"


# One line for every other failure ----------------------------------------------------------------

_OURS = {"batchlab", "torch", "numpy", "typer", "click", "rich", "matplotlib", "sklearn", "scipy"}


def is_user_frame(frame: FrameType) -> bool:
    """A frame of the user's code: not batchlab's, not the standard library's, not a dependency's,
    not the launcher's (`__main__`). A workload loaded from a file lives in a module named
    `_batchlab_user_*`."""
    module = str(frame.f_globals.get("__name__", ""))
    if module.startswith("_batchlab_user_"):
        return True
    top = module.split(".", 1)[0]
    if top in _OURS or top in sys.stdlib_module_names or top == "__main__":
        return False
    return not frame.f_code.co_filename.startswith("<")


def user_frames(tb: TracebackType | None) -> list[traceback.FrameSummary]:
    return [summary for frame, summary in _walk(tb) if is_user_frame(frame)]


def _walk(tb: TracebackType | None) -> list[tuple[FrameType, traceback.FrameSummary]]:
    out = []
    while tb is not None:
        out.append(
            (
                tb.tb_frame,
                traceback.FrameSummary(
                    tb.tb_frame.f_code.co_filename, tb.tb_lineno, tb.tb_frame.f_code.co_name, lookup_line=True
                ),
            )
        )
        tb = tb.tb_next
    return out


def _error_line(error: BaseException) -> str:
    text = traceback.format_exception_only(type(error), error)[-1].strip()
    return text if len(text) <= 300 else text[:297] + "..."


def _where(summary: traceback.FrameSummary) -> str:
    return f"{summary.filename}:{summary.lineno}, in {summary.name}"


def describe_failure(error: BaseException, *, debug: bool) -> tuple[str, int, str | None]:
    """(the one line, the exit code, the traceback to show before it or None) for an exception that
    is not batchlab's own."""
    frames = user_frames(error.__traceback__)
    if frames:
        shown = None
        if debug:
            shown = "Traceback (your code's frames):\n" + "".join(traceback.format_list(frames))
            shown += _error_line(error)
        hint = "" if debug else "; run again with --debug for its traceback"
        return f"the workload's code raised {_error_line(error)} ({_where(frames[-1])}){hint}", 2, shown
    disk = _disk_failure(error)
    if disk is not None:
        return disk, 2, None
    location = ""
    ours = _walk(error.__traceback__)
    if ours:
        location = f" (at {Path(ours[-1][1].filename).name}:{ours[-1][1].lineno})"
    shown = "".join(traceback.format_exception(type(error), error, error.__traceback__)) if debug else None
    return (
        f"internal error: {_error_line(error)}{location}; this is a bug in batchlab: please report it "
        "with the output of the same command run with --debug",
        1,
        shown,
    )


def _disk_failure(error: BaseException) -> str | None:
    """A full disk, a file-size limit or an unwritable place, in one line; None for anything else."""
    full = (
        "free some space (or raise the file-size limit) and run the same command again: runs "
        "committed before are kept"
    )
    if isinstance(error, sqlite3.Error):
        text = str(error)
        if "disk is full" in text or "disk I/O error" in text:
            return f"cannot write the results store ({text}); {full}"
        if "readonly" in text or "read-only" in text:
            return f"the results store is read-only ({text}); make it writable, or pass another --out"
        return f"the results store failed: {text}; check the file, or pass another --out"
    if isinstance(error, OSError) and error.errno is not None:
        where = f" {error.filename}" if error.filename else ""
        if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return f"cannot write{where} ({os.strerror(error.errno)}); {full}"
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"cannot write{where} ({os.strerror(error.errno)}); pass --out a folder you can write"
        if error.errno in (errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.ENAMETOOLONG):
            return f"bad path{where} ({os.strerror(error.errno)}); pass --out a folder's path"
    return None


def interrupted_line(stop: Interrupted, command: str, folder: Path | None, *, resumable: bool) -> str:
    """What was interrupted, where the finished results are, and the command that resumes."""
    line = f"interrupted by {stop}: `{command}` stopped"
    if folder is None:
        return line + "; nothing was saved (no --out given); run it again to start over"
    store = folder / "results.db"
    if resumable and store.is_file():
        return line + f"; finished runs are kept in {store}: run the same command again to resume"
    return (
        line + f"; no partial result of this command is kept (results of earlier commands in {folder} "
        "are untouched): run it again to start over"
    )


def command_line(argv: list[str] | None = None) -> str:
    import shlex

    args = sys.argv[1:] if argv is None else argv
    return "batchlab " + shlex.join(args) if args else "batchlab"
