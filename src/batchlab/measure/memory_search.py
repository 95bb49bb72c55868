"""The memory search as a pure function of its trials: grow, narrow, confirm (`search_max_batch`),
and the memory model fitted to what the trials read."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from batchlab.measure.memory_trial import (
    MIN_STEPS,
    MemoryTrial,
)

Trial = Callable[[int, bool], MemoryTrial]  # (batch_size, confirmation) -> outcome


def fit_memory_model(trials: list[MemoryTrial], *, from_batch: int = 0) -> tuple[float, float] | None:
    """Least-squares (fixed_bytes, per_sample_bytes) over the trials that fit at batch sizes of at
    least `from_batch`; None with fewer than two distinct sizes."""
    points = [
        (t.batch_size, t.peak_bytes)
        for t in trials
        if t.fits and t.peak_bytes is not None and t.batch_size >= from_batch
    ]
    sizes = {b for b, _ in points}
    if len(sizes) < 2:
        return None
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_p = sum(p for _, p in points) / n
    var = sum((b - mean_b) ** 2 for b, _ in points)
    slope = sum((b - mean_b) * (p - mean_p) for b, p in points) / var
    return mean_p - slope * mean_b, slope


@dataclass
class Pace:
    """A time budget for one search: `seconds` in all, and no trial whose steps are predicted to
    take longer than `max_step_seconds` each. Step time is extrapolated linearly in the batch from
    the last timed trial that fit; at small batches a step is mostly fixed overhead, so this
    over-predicts, and the search stops early rather than late. A search that stops on its pace
    answers "at least N", N a batch that fit, with the reason."""

    seconds: float
    max_step_seconds: float
    started: float = field(default_factory=time.perf_counter)
    trial_steps: int = MIN_STEPS + 2  # what one more trial costs, in steps (and its setup)

    def largest(self, trials: list[MemoryTrial]) -> tuple[int | None, str]:
        """The largest batch the next trial may try (None: no limit known yet), and why."""
        left = self.seconds - (time.perf_counter() - self.started)
        if left <= 0:
            return 0, f"the {self.seconds:g} s budget ran out"
        timed = [t for t in trials if t.fits and t.step_seconds and not t.confirmation]
        if not timed:
            return None, ""
        last = max(timed, key=lambda t: t.batch_size)
        per_sample = last.step_seconds / last.batch_size  # type: ignore[operator]
        by_step = int(self.max_step_seconds / per_sample)
        by_time = int(left / self.trial_steps / per_sample)
        if by_step <= by_time:
            return by_step, (
                f"a step at batch {last.batch_size} took {last.step_seconds:.2f} s "
                f"(limit {self.max_step_seconds:g} s)"
            )
        return by_time, f"a larger batch would overrun the {self.seconds:g} s budget"


class _Search:
    """The state of one search: what fit, what failed, and what to try next."""

    def __init__(
        self, trial: Trial, *, start: int, cap: int, granularity: int, budget: float, pace: Pace | None = None
    ) -> None:
        self.trial, self.cap, self.g, self.budget = trial, cap, granularity, budget
        self.start = start
        self.pace = pace
        self.trials: list[MemoryTrial] = []
        self.best: int | None = None  # largest size that fit
        self.bad: int | None = None  # smallest size that did not
        self.stopped: str | None = None  # why the search stopped at a lower bound, if it did

    def paced(self, size: int, *, shorten: bool) -> int | None:
        """`size` if the pace allows a trial there; with `shorten`, else the largest size it allows,
        if that is still 10% past the best; else None, the search stopping at its best so far with
        the pace's reason in `stopped`."""
        if self.stopped is not None:
            return None
        if self.pace is None:
            return size
        largest, reason = self.pace.largest(self.trials)
        if largest is None or size <= largest:
            return size
        if shorten and self.best is not None and self._floor(largest) >= self.best * 1.1 + self.g:
            return self._floor(largest)
        self.stopped = reason
        return None

    def run(self, batch_size: int, *, confirmation: bool = False) -> MemoryTrial:
        outcome = self.trial(batch_size, confirmation)
        self.trials.append(outcome)
        if confirmation:  # a confirmation's verdict is handled by `confirm`
            return outcome
        if outcome.fits:
            self.best = max(self.best or 0, batch_size)
        else:
            self.bad = batch_size if self.bad is None else min(self.bad, batch_size)
        return outcome

    def local_model(self) -> tuple[float, float] | None:
        """The memory model near the edge: memory is concave at small batches (fixed workspaces
        show up early), so the line is fitted on the trials at a quarter of the best size or more."""
        assert self.best is not None
        return fit_memory_model(self.trials, from_batch=self.best // 4) or fit_memory_model(self.trials)

    def edge(self) -> int | None:
        """The largest multiple of g whose predicted peak is within the budget, if the model is usable."""
        model = self.local_model()
        if model is None or model[1] <= 0:
            return None
        fixed, per_sample = model
        return self._floor(int((self.budget - fixed) // per_sample))

    def model_explains_failure(self) -> bool:
        """Whether the model predicts the failure seen at `bad` (so its edge is worth trying)."""
        model = self.local_model()
        if model is None or self.bad is None or model[1] <= 0:
            return False
        return model[0] + model[1] * self.bad > self.budget

    def _floor(self, b: int) -> int:
        return max(self.start, (b // self.g) * self.g)

    def grow(self) -> None:
        """Up until something fails: the first model-guided jump aims at the predicted edge; if the
        model then still puts the edge higher, later jumps aim 1% past it, so that a failure
        brackets the edge instead of creeping up on it."""
        assert self.best is not None
        jumps = 0
        while self.bad is None and self.best < self.cap:
            edge = self.edge()
            if edge is None:  # one point so far: a long stride, so the model's slope is well measured
                guess = max(self.best * 64, 64)
            elif jumps == 0 or edge <= self.best:  # first jump, or the model says the edge is here
                guess = edge
                jumps += 1
            else:  # the last jump undershot: aim past the edge to bracket it
                guess = edge + max(self.g, edge // 100)
            size = self.paced(min(self.cap, max(self._floor(guess), self.best + self.g)), shorten=True)
            if size is None:
                return
            self.run(size)

    def narrow(self) -> None:
        guided = 2  # trust the model for two trials once it explains the failure; then bisect
        while self.best is not None and self.bad is not None and self.bad - self.best > self.g:
            best, bad = self.best, self.bad
            edge = self.edge() if guided > 0 and self.model_explains_failure() else None
            if edge is not None:
                # When the failure was an overshoot just past the predicted edge, the model runs
                # slightly optimistic: aim 1% below it, to bracket from below.
                guided -= 1
                margin = max(self.g, edge // 100)
                if bad <= edge + 2 * margin:
                    edge = self._floor(edge - margin)
                candidate = edge if best < edge < bad else (best + self.g if edge <= best else bad - self.g)
            elif bad / best > 4:
                candidate = self._floor(int(math.sqrt(best * bad)))
            else:
                candidate = self._floor((best + bad) // 2)
            paced = self.paced(min(max(candidate, best + self.g), bad - self.g), shorten=False)
            if paced is None:
                return
            self.run(paced)

    def confirm(self) -> None:
        """Run the answer again, longer: a peak that creeps past the limit late is caught here.

        When it fails, the creep (the long run's peak less the short trial's) is converted into
        samples with the local slope, and the answer steps down by that much and is confirmed
        again: one trial per failure, rather than a search from scratch.
        """
        while self.best is not None and self.stopped is None:  # (a paced stop is a lower bound as is)
            size = self.best
            outcome = self.run(size, confirmation=True)
            if outcome.fits:
                return
            self.bad = size
            self.best = self._step_down(size, outcome)

    def _step_down(self, size: int, failed: MemoryTrial) -> int | None:
        if size <= self.start:
            return None
        model = self.local_model()
        per_sample = model[1] if model is not None and model[1] > 0 else None
        short = next(
            (
                t.peak_bytes
                for t in reversed(self.trials)
                if t.batch_size == size and t.fits and not t.confirmation and t.peak_bytes
            ),
            None,
        )
        if short is None and model is not None:
            short = int(model[0] + model[1] * size)
        steps = 1
        if per_sample is not None and short is not None:
            creep = max(failed.peak_bytes or self.budget, self.budget) - short
            steps = max(1, math.ceil(creep / per_sample))
        return max(self.start, size - steps * self.g)


def search_max_batch(
    trial: Trial,
    *,
    start: int,
    cap: int,
    granularity: int,
    budget_bytes: float,
    pace: Pace | None = None,
) -> tuple[int | None, list[MemoryTrial], str | None]:
    """The largest multiple of `granularity` (or `start`) up to `cap` whose trial fits, every
    trial, and, when the pace stopped the search first, why (the answer is then a lower bound)."""
    search = _Search(trial, start=start, cap=cap, granularity=granularity, budget=budget_bytes, pace=pace)
    if not search.run(start).fits:
        return None, search.trials, None
    search.grow()
    search.narrow()
    search.confirm()
    return search.best, search.trials, search.stopped
