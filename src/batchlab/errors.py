"""batchlab's own exceptions: each says what was wrong, the bad value, and how to fix it."""

from __future__ import annotations

# Seeds span what NumPy and Lightning's seed_everything take; an offset added to one stays in torch's int64.
SEED_MAX = 2**32 - 1


class BatchlabError(Exception):
    """Base class for every error batchlab raises on purpose."""


class ConfigError(BatchlabError, ValueError):
    """A bad argument or field: the message names it, its value and the fix."""


class WorkloadError(BatchlabError, ValueError):
    """A workload spec that cannot be loaded, or a workload that fails to run."""


def bad(field: str, value: object, expected: str, fix: str | None = None) -> ConfigError:
    """Build the one-line error every check in batchlab raises.

    >>> str(bad("batch_size", 0, "an integer >= 1", "pass --batch-size 32"))
    'batch_size must be an integer >= 1 (got 0); pass --batch-size 32'
    """
    message = f"{field} must be {expected} (got {value!r})"
    if fix:
        message += f"; {fix}"
    return ConfigError(message)


def check_int(
    field: str, value: object, *, minimum: int = 1, fix: str | None = None, expected: str | None = None
) -> int:
    """`value` if it is an integer >= `minimum` (a bool is not one); else `bad` naming the field.

    >>> check_int("draws", 4, minimum=8, fix="pass --draws 64")
    Traceback (most recent call last):
    ...
    batchlab.errors.ConfigError: draws must be an integer >= 8 (got 4); pass --draws 64
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise bad(field, value, expected or f"an integer >= {minimum}", fix)
    return value


def check_seed(value: object, *, field: str = "seed", fix: str = "pass seed=0") -> int:
    """`value` if it is a seed: a whole number from 0 to SEED_MAX (2**32 - 1); else `bad`.

    >>> check_seed(-1, fix="pass --seed 0")
    Traceback (most recent call last):
    ...
    batchlab.errors.ConfigError: seed must be a whole number from 0 to 4294967295 (got -1); pass --seed 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise bad(field, value, f"a whole number from 0 to {SEED_MAX}", fix)
    return value
