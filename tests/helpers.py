"""Shared test helpers."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from batchlab.cli import app


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def invoke_json(*args: str) -> dict[str, Any]:
    """Run a command with --json; it must exit 0 and print exactly one JSON object."""
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_one_line_error(result: Any, *fragments: str) -> None:
    """Exit code 2, one line on stderr that contains each fragment, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
