"""Byte sizes: parse '1.5GiB', format 1610612736. GiB means 1024**3 and says so."""

from __future__ import annotations

import re

from batchlab.errors import bad

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str, *, field: str = "size") -> int:
    """'1.5GiB' -> 1610612736; '256MiB', '2GB', '1000' (bytes) are accepted."""
    match = _PATTERN.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise bad(field, text, "a size such as 1.5GiB, 256MiB or 2GB")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise bad(field, text, "a size greater than zero")
    return value


def format_bytes(n: float) -> str:
    """1610612736 -> '1.50 GiB' (binary units, named as such)."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def format_number(value: float, digits: int = 4) -> str:
    """A number as people write it: 17440.3 -> '17,440', 671.94 -> '671.9', 0.001864 -> '0.001864';
    scientific only for the very small (1.2e-05) and the astronomically large (1e+15 and up)."""
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    magnitude = abs(value)
    if 1000 <= magnitude < 1e15:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"
