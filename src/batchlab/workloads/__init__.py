"""Built-in workloads: each trains to its target on a 2-core CPU in seconds at its reference batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from batchlab.workload import Workload
from batchlab.workloads import charlm, digits, linreg


class Builtin(NamedTuple):
    factory: Callable[[], Workload]
    summary: str


BUILTINS: dict[str, Builtin] = {
    "digits-mlp": Builtin(digits.mlp, "MLP on scikit-learn's 8x8 digits; SGD with momentum"),
    "digits-cnn": Builtin(digits.cnn, "CNN with batch norm on scikit-learn's 8x8 digits; SGD with momentum"),
    "linreg": Builtin(
        linreg.workload, "linear regression with a closed-form gradient noise scale; plain SGD"
    ),
    "charlm": Builtin(charlm.workload, "character-level transformer on CPython's pydoc text; AdamW"),
}

__all__ = ["BUILTINS", "Builtin"]
