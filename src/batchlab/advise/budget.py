"""The advice's clock: seconds left, where they went, and what an extra run may cost."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from batchlab.core import dist as _dist

# The advice's cost in proportion to one reference run (issue 13's goal): it spends up to this many
# reference runs' training time plus EXTRA_SECONDS. A second seed of the reference runs only within it.
REFERENCE_RUNS = 5


EXTRA_SECONDS = 10.0


class Budget:
    """Seconds left, and where they went: each phase (memory, throughput, ...) is timed on `clock`."""

    def __init__(self, seconds: float | None, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds = seconds
        self.clock = clock
        self.start = clock()
        self.phases: dict[str, float] = {}
        self._phase: str | None = None
        self._since = self.start

    def enter(self, phase: str | None) -> None:
        now = self.clock()
        if self._phase is not None:
            self.phases[self._phase] = self.phases.get(self._phase, 0.0) + now - self._since
        self._phase, self._since = phase, now

    def spent(self) -> float:
        """Seconds since the start; rank 0's under torchrun, so that every rank decides alike."""
        return float(_dist.broadcast(self.clock() - self.start))

    def left(self) -> float:
        """Rank 0's reading under torchrun, so that every rank stops at the same point."""
        if self.seconds is None:
            return math.inf
        return self.seconds - self.spent()


def allowed_seconds(reference_run_seconds: float) -> float:
    """What the advice may spend in all, in proportion to one reference run: REFERENCE_RUNS such runs
    + EXTRA_SECONDS."""
    return REFERENCE_RUNS * reference_run_seconds + EXTRA_SECONDS
