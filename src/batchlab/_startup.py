"""The first thing `batchlab` (the command) runs: importing torch takes seconds, and a Ctrl-C or a
SIGTERM then must end the command in one line, not in a traceback from inside the import. Imported
first by the package; it does nothing for a program that imports batchlab, and the command's own
handlers (`_guard.install_interrupt_handlers`) replace this one once the command starts."""

from __future__ import annotations

import itertools
import os
import signal
import sys


def started_as_the_cli() -> bool:
    """`batchlab ...` or `python -m batchlab ...` (torchrun's ranks too), not a program importing us."""
    as_module = any(
        a == "-m" and b == "batchlab" for a, b in itertools.pairwise(getattr(sys, "orig_argv", []))
    )
    program = (getattr(sys, "argv", None) or [""])[0]  # an embedded interpreter may have no argv
    return as_module or os.path.basename(program) in ("batchlab", "batchlab.exe")


def _stopped_while_starting(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    os.write(2, f"stopped: interrupted by {name} while batchlab was starting; nothing ran\n".encode())
    os._exit(128 + signum)


if started_as_the_cli():
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, _stopped_while_starting)
