"""The `batchlab` command: each command parses, calls one library function, renders."""

from batchlab.cli.commands import app, main

__all__ = ["app", "main"]
