"""click's usage errors (an unknown option, a value that is not a number) as batchlab's one line.

Every bad input ends the same way: one red line that names the field, the bad value and the fix,
and exit code 2. click's own errors print a usage block and a hint over several lines; here they
are turned into that one line in one place, the app's group (`Commands`), for every command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

try:  # typer >= 0.2x carries its own copy of click
    from typer._click.core import Context
    from typer._click.exceptions import NoArgsIsHelpError, NoSuchOption, UsageError
except ImportError:  # older typer runs on click itself
    from click import Context, NoSuchOption, UsageError  # type: ignore[assignment,no-redef]
    from click.exceptions import NoArgsIsHelpError  # type: ignore[assignment,no-redef]

from batchlab.core import dist as _dist
from batchlab.errors import ConfigError, bad, check_seed


class Refused(Exception):
    """A value an option's parser refused: batchlab's one line (see `usage.one_line`). Not a
    ValueError, which the option machinery would wrap into its own multi-line message."""


def whole_number(flag: str) -> Callable[[Any], int]:
    """The parser of an integer option: a bad value gets batchlab's one-line error."""
    field = flag.lstrip("-").replace("-", "_")

    def parse(text: Any) -> int:
        if isinstance(text, int) and not isinstance(text, bool):
            return text
        try:
            return int(str(text).strip())
        except ValueError:
            raise Refused(str(bad(field, text, "a whole number", f"pass {flag} 32, say"))) from None

    return parse


def seed_number(flag: str) -> Callable[[Any], int]:
    """The parser of a seed option: a whole number from 0 to 2**32 - 1, else the one-line error."""
    number = whole_number(flag)
    field = flag.lstrip("-").replace("-", "_")

    def parse(text: Any) -> int:
        try:
            return check_seed(number(text), field=field, fix=f"pass {flag} 0")
        except ConfigError as error:
            raise Refused(str(error)) from None

    return parse


class Commands(TyperGroup):
    """The app's groups (the commands, and `study`'s): their usage errors end in one line."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: Context | None = None, **extra: Any
    ) -> Context:
        with one_line():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: Context) -> Any:
        with one_line():
            return super().invoke(ctx)


@contextmanager
def one_line() -> Iterator[None]:
    """A usage error becomes one red line on stderr (rank 0's, under torchrun) and exit code 2."""
    try:
        yield
    except NoArgsIsHelpError:  # a bare command prints its help
        raise
    except (Refused, UsageError) as error:
        if _dist.is_main():
            line = str(error) if isinstance(error, Refused) else describe(error)
            Console(stderr=True).print(
                Text.assemble(("error:", "bold red"), " ", line), highlight=False, soft_wrap=True
            )
        raise typer.Exit(2) from None


def describe(error: UsageError) -> str:
    """The one line for a usage error: the field, the bad value and the fix."""
    command = " ".join(["batchlab", *(error.ctx.command_path.split()[1:] if error.ctx else [])])
    if isinstance(error, NoSuchOption):
        noun, elsewhere = _siblings_with(error.option_name, error.ctx)
        where = f" (it is an option of another {noun}: {elsewhere})" if elsewhere else ""
        return (
            f"{error.option_name} is not an option of `{command}`{where}; "
            f"drop {error.option_name}, or see `{command} --help`"
        )
    return f"{command}: {error.format_message()}"


def _siblings_with(option: str, ctx: Context | None) -> tuple[str, str]:
    """What a sibling is called ("study" under `study`, else "command"), and the siblings that take
    `option`, comma-separated (empty if none)."""
    parent = ctx.parent if ctx is not None else None
    group = parent.command if parent is not None else None
    if not isinstance(group, TyperGroup) or ctx is None or ctx.command.name is None:
        return "", ""
    noun = "study" if group.name == "study" else "command"
    names = []
    for name, command in group.commands.items():
        if name != ctx.command.name and any(option in p.opts for p in command.params):
            names.append(name)
    return noun, ", ".join(sorted(names))
