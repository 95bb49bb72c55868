"""Workloads by name: the built-ins (each trains to its target on a 2-core CPU in seconds at its
reference batch), and `load_workload`, which also imports a user's `module:function` or `file.py:function`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from batchlab.errors import ConfigError, WorkloadError
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


def load_workload(spec: str | Workload) -> Workload:
    """A built-in name, 'package.module:function' or 'path/to/file.py:function' -> a Workload."""
    if isinstance(spec, Workload):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise WorkloadError(
            "workload must be a name or module:function (got an empty value); "
            f"pass --workload {next(iter(BUILTINS))}"
        )
    if spec in BUILTINS:
        return _with_spec(BUILTINS[spec].factory(), spec)
    if ":" not in spec:
        names = ", ".join(BUILTINS)
        raise WorkloadError(
            f"workload {spec!r} is not a built-in ({names}) nor a 'module:function' or "
            "'file.py:function' spec; run `batchlab workloads` to list the built-ins"
        )
    where, _, func_name = spec.rpartition(":")
    if not where.strip() or not func_name.strip():
        raise WorkloadError(
            f"workload {spec!r} names no {'module or file' if not where.strip() else 'function'}; "
            "pass 'package.module:function' or 'file.py:function'"
        )
    module = _import_file(where, spec) if where.endswith(".py") else _import_module(where, spec)
    factory = getattr(module, func_name, None)
    if factory is None or not callable(factory):
        raise WorkloadError(
            f"workload {spec!r}: {where} has no function {func_name!r}; "
            "name a function that returns a batchlab.Workload"
        )
    try:
        workload = factory()
    except ConfigError:
        raise
    except TypeError as error:
        raise WorkloadError(f"workload {spec!r}: calling {func_name}() failed: {error}") from None
    if not isinstance(workload, Workload):
        raise WorkloadError(
            f"workload {spec!r}: {func_name}() returned {type(workload).__name__}, not a "
            "batchlab.Workload; return Workload(name=..., model=..., ...)"
        )
    if ".py:" in spec:
        where = str(Path(where).resolve())
    return _with_spec(workload, f"{where}:{func_name}")


def _with_spec(workload: Workload, spec: str) -> Workload:
    object.__setattr__(workload, "spec", spec)  # frozen; set once, right after construction
    return workload


def _import_module(name: str, spec: str) -> Any:
    try:
        return importlib.import_module(name)
    except (ImportError, ValueError, TypeError) as error:  # missing, empty or relative names
        raise WorkloadError(
            f"workload {spec!r}: cannot import module {name!r} ({error}); "
            "check the name, or that its folder is on PYTHONPATH"
        ) from None


def _import_file(path: str, spec: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise WorkloadError(f"workload {spec!r}: file {path!r} does not exist; check the path")
    module_name = f"_batchlab_user_{abs(hash(str(file.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, file)
    if loader_spec is None or loader_spec.loader is None:
        raise WorkloadError(f"workload {spec!r}: cannot load {path!r} as Python")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # child processes and pickling-free lookups find it by name
    try:
        loader_spec.loader.exec_module(module)
    except SyntaxError as error:  # no frame of the user's to point at: name the file and line here
        del sys.modules[module_name]
        code = (error.text or "").strip()
        raise WorkloadError(
            f"workload {spec!r}: {error.filename or path} line {error.lineno} does not parse: "
            f"{error.msg}" + (f" ({code[:80]})" if code else "") + "; fix the file"
        ) from None
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


__all__ = ["BUILTINS", "Builtin", "load_workload"]
