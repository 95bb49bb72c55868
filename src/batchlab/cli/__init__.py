"""The `batchlab` command: each command parses, calls one library function, renders.

Progress goes to stderr; `--json` prints exactly one JSON object on stdout. Every command runs
inside `shell.guarded`, which turns each way it can fail into one line and an exit code. The
commands are registered here, in the order `batchlab --help` lists them.
"""

from batchlab.cli.advising import advise_command, report_command
from batchlab.cli.measuring import memory_command, noise_command, throughput_command
from batchlab.cli.shell import app, main
from batchlab.cli.studying import study_app
from batchlab.cli.training import sweep_command, train_command, workloads_command

for _name, _command in (
    ("workloads", workloads_command),
    ("train", train_command),
    ("memory", memory_command),
    ("throughput", throughput_command),
    ("noise", noise_command),
    ("sweep", sweep_command),
    ("advise", advise_command),
    ("report", report_command),
):
    app.command(_name)(_command)

app.add_typer(study_app, name="study")

__all__ = ["app", "main"]
