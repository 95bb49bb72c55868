"""The training loop of one run: each step (the rate, the noise gating, the clip), the evaluation
schedule with kept-weight replay, checkpoints, divergence, and the result. `train.run` holds the
interface, `train()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from batchlab.core import dist as _dist
from batchlab.core.data import Batch, DeviceData, Position
from batchlab.core.device import clock
from batchlab.core.monitor import NoiseMonitor, NoiseReading
from batchlab.core.precision import Amp, Precision, optimizer_step
from batchlab.core.progress import Steps
from batchlab.core.step import backward
from batchlab.core.stream import placed, stream_order
from batchlab.schedule import Phase
from batchlab.sharpness import minimum_sharpness
from batchlab.train.checkpoint import Checkpoint
from batchlab.train.config import Plan, TrainConfig
from batchlab.train.evaluation import (
    DIVERGENCE_MIN,
    DIVERGENCE_SAMPLE,
    EVAL_CHUNK,
    FINAL_TRAIN_SAMPLE,
    SAMPLE_SEED,
    TRAIN_SAMPLE,
    Kept,
    auto_check,
    auto_eval,
    evaluate_within_memory,
    has_diverged,
)
from batchlab.train.model import fresh_model
from batchlab.train.rate import StepRecipe
from batchlab.train.result import CurvePoint, TrainResult, finite_or_none, noise_summary
from batchlab.workload import Workload

# The tracked noise scale averages over an exponential window of the last NOISE_WINDOW of the steps
# so far (counted in steps, whatever the interval between measured steps). |G|^2 falls fast as the
# loss falls, and an average over a longer window mixes in the larger |G|^2 of earlier steps
# (docs/measurements.md#noise-window).
NOISE_WINDOW = 0.1


class Loop:
    """The state of one run. `train.run.train` is the interface."""

    def __init__(self, workload: Workload, config: TrainConfig, plan: Plan) -> None:
        device = plan.device
        self.workload, self.device, self.config = workload, device, config
        self.schedule = plan.schedule
        self._enter(plan.schedule.phases[0])
        self.accumulation, self.lr = config.accumulation, plan.lr
        self.warmup_steps, self.seed = config.warmup_steps, config.seed
        self.recipe = StepRecipe(
            plan.lr,
            warmup_steps=config.warmup_steps,
            schedule=plan.lr_schedule,
            horizon=plan.horizon,
            clip=workload.clip_grad_norm,
        )
        self.noise_every, self.noise_parts = plan.noise_every, plan.noise_parts
        self.limit, self.rule = plan.limit, plan.rule
        self.model = fresh_model(
            workload,
            config.seed,
            device,
            checkpoint=config.checkpoint,
            ghost_batch_size=config.ghost_batch_size,
        )
        self.precision = plan.precision
        self.amp = None if plan.precision is Precision.FP32 else Amp(plan.precision, device)
        self.model.train()
        self.optimizer = workload.optimizer(self.model.parameters(), plan.lr)
        self.train_data = placed(workload.train_data, device)
        self.eval_data = None if workload.eval_data is None else DeviceData(workload.eval_data, device)
        on_train = workload.target.metric.startswith("train_")
        sample_size = TRAIN_SAMPLE if on_train else DIVERGENCE_SAMPLE
        if not on_train and self.eval_data is not None:
            sample_size = max(DIVERGENCE_MIN, min(sample_size, self.eval_data.size))
        self.train_sample = self.train_data.sample(sample_size, SAMPLE_SEED)
        self.eval_batch = max(plan.schedule.largest_batch_size, EVAL_CHUNK)
        self.rank, self.world = _dist.rank(), _dist.world_size()
        # What a step runs: the model, or DDP around it.
        self.net: nn.Module = _dist.data_parallel(self.model, device) if self.world > 1 else self.model
        # The same monitor users attach to their own loops: hooks see each micro-batch's (or rank's)
        # gradient; a measured step without either is split in noise_parts.
        self.monitor = (
            NoiseMonitor(self.model, window=NOISE_WINDOW, population=workload.train_len)
            if config.track_noise
            else None
        )
        self.step = 0
        self.examples = 0
        self.lr_now = plan.lr
        self.seconds = 0.0
        self.diverged = False
        self.target_point: CurvePoint | None = None
        self.start_point: CurvePoint | None = None  # the run's first point, for divergence
        self.position: Position | None = None  # where a resumed run's data stands
        self.resumed_from: dict[str, Any] | None = None
        self.saves = plan.saves
        self.checkpoint_dir = None if config.checkpoint_dir is None else Path(config.checkpoint_dir)
        self.saved: list[dict[str, Any]] = []
        self.noise_at_stop: NoiseReading | None = None
        if plan.resume is not None:
            self.restore(plan.resume)

    def _enter(self, phase: Phase) -> None:
        self.phase, self.batch_size, self.lr_stale = phase, phase.batch_size, True
        by_examples = self.schedule.by_examples
        start = phase.start(by_examples)
        later = [p.start(by_examples) for p in self.schedule.phases if p.start(by_examples) > start]
        self.next_phase_start = min(later, default=math.inf)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Take up a saved run where it stood (model, optimizer, counts, data, random state)."""
        checkpoint.restore(self.model, self.optimizer, None if self.amp is None else self.amp.scaler)
        self.lr_now = self.optimizer.param_groups[0]["lr"]
        self.step, self.examples, self.seconds = checkpoint.step, checkpoint.examples, checkpoint.seconds
        self.position = checkpoint.position
        self.start_point = CurvePoint.from_dict(checkpoint.start_point)
        reached = checkpoint.target_point
        self.target_point = None if reached is None else CurvePoint.from_dict(reached)
        self._enter(self.schedule.at(checkpoint.position.epoch, checkpoint.examples))
        self.resumed_from = {"step": self.step, "examples": self.examples, "path": str(checkpoint.path)}

    def _save(self, point: CurvePoint, position: Position) -> None:
        assert self.checkpoint_dir is not None and self.start_point is not None
        if self.rank == 0:
            path = Checkpoint.save(
                self.checkpoint_dir,
                workload=self.workload.name,
                model=self.model,
                optimizer=self.optimizer,
                scaler=None if self.amp is None else self.amp.scaler,
                step=self.step,
                examples=self.examples,
                seconds=self.seconds,
                position=position,
                start_point=self.start_point.to_dict(),
                point=point.to_dict(),
                target_point=None if self.target_point is None else self.target_point.to_dict(),
            )
            self.saved.append({"step": self.step, "examples": self.examples, "path": str(path)})

    def _train_step(self, batch: Batch) -> torch.Tensor:
        if self.lr_stale or self.recipe.moves(self.step):  # else the rate is what it was
            lr = self.recipe.rate(self.step, self.examples, self.batch_size, self.phase.lr_factor)
            if lr != self.lr_now:
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.lr_now = lr
            self.lr_stale = False
        measure = self.monitor is not None and self.step % self.noise_every == 0
        if self.monitor is not None:
            self.monitor.active = measure
        self.optimizer.zero_grad(set_to_none=True)
        parts = self.accumulation
        if measure and self.world == 1 and parts == 1:
            parts = self.noise_parts  # one batch size only: split this step to get two
        out = backward(
            self.net,
            self.workload.loss,
            batch,
            micro_batches=parts,
            amp=self.amp,
            no_sync=self.net.no_sync if self.world > 1 else None,  # type: ignore[arg-type]
        )
        if self.monitor is not None:  # the gradient as it came, before any clip
            self.monitor.step(self.batch_size)
        self.recipe.clip_gradients(self.model, self.optimizer, self.amp)
        optimizer_step(self.optimizer, self.amp)
        self.step += 1
        self.examples += self.batch_size
        return out.loss

    def run(
        self, *, on_point: Callable[[CurvePoint], None] | None, progress: Steps | None
    ) -> tuple[list[CurvePoint], str]:
        limit, until_target, eval_every = self.limit, self.config.until_target, self.config.eval_every
        curve = [self._point(None)]
        if self.start_point is None:
            self.start_point = curve[0]
        if on_point:
            on_point(curve[0])
        if until_target and self.target_point is not None:  # resumed past the target already
            return curve, "target"
        batches: Iterator[tuple[Position, Batch]] = self.train_data.epochs(
            self.schedule.batch_size_at,
            torch.Generator().manual_seed(self.seed),
            shard=(self.rank, self.world),
            start=self.position,
        )
        losses: list[torch.Tensor] = []  # summed only at evaluation: no per-step device sync
        # A run to the target scores the data at checks only (CHECK_RESOLUTION); a run for its curve,
        # or on a schedule the caller chose, at every point.
        due: Callable[[int], bool] = auto_eval
        check: Callable[[int], bool] = auto_check if until_target else auto_eval
        if eval_every is not None:
            due = check = lambda step: step % eval_every == 0
        kept: list[Kept] = []  # points since the last check, not scored yet
        by_examples = self.schedule.by_examples
        started = clock(self.device)
        stop = "budget"
        while self.step < limit:
            position, batch = next(batches)
            if (self.examples if by_examples else position.epoch) >= self.next_phase_start:
                self._enter(self.schedule.at(position.epoch, self.examples))
            losses.append(self._train_step(batch))
            save = self.step in self.saves
            end = save or self.step == limit
            if not (due(self.step) or end):
                continue
            self.seconds += clock(self.device) - started
            batch_loss = float(_dist.mean(torch.stack(losses).mean()))  # over the ranks' shards too
            losses.clear()
            if not (check(self.step) or end):
                kept.append(self._keep(batch_loss))
                started = clock(self.device)
                continue
            point = self._point(batch_loss)
            assert self.start_point is not None
            if has_diverged(point, self.start_point):
                self.diverged, stop = True, "diverged"
                self._emit([point], curve, on_point, progress, limit)
                break
            points = [point]
            if self.target_point is None and self._reached(point) and kept:  # only until_target keeps
                points = self._earliest_reaching(kept, point)
            kept.clear()
            self._emit(points, curve, on_point, progress, limit)
            if self.target_point is None:
                self.target_point = next((p for p in points if self._reached(p)), None)
            if save and points[-1] is point:  # after the target: a resumed run knows it
                self._save(point, position)
            if until_target and self.target_point is not None:
                stop = "target"
                break
            started = clock(self.device)
        return curve, stop

    def _reached(self, point: CurvePoint) -> bool:
        value = point.value(self.workload.target.metric)
        return value is not None and self.workload.target.reached(value)

    def _emit(
        self,
        points: list[CurvePoint],
        curve: list[CurvePoint],
        on_point: Callable[[CurvePoint], None] | None,
        progress: Steps | None,
        limit: int,
    ) -> None:
        for point in points:
            curve.append(point)
            if on_point:
                on_point(point)
        if progress:
            progress(points[-1].step, limit)

    def _keep(self, batch_loss: float) -> Kept:
        """This point's weights, on the host (a GPU's memory was probed without them), to score later."""
        weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        reading = self.monitor.reading() if self.monitor is not None else None
        return Kept(self._unscored(batch_loss, reading), weights, reading)

    def _earliest_reaching(self, kept: list[Kept], check: CurvePoint) -> list[CurvePoint]:
        """Score the kept points in order up to the first that meets the target, which `check` does.

        The points scored. The run stops at the target: at a kept point that met it, it is left there
        (its weights, steps, examples, seconds and noise reading); else `check` ends the list.
        """
        live = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        scored: list[CurvePoint] = []
        for item in kept:
            self.model.load_state_dict(item.weights)
            scored.append(self._scored(item.point))
            if self._reached(scored[-1]):
                self.step, self.examples = item.point.step, item.point.examples
                self.seconds, self.noise_at_stop = item.point.seconds, item.noise
                return scored
        self.model.load_state_dict(live)
        return [*scored, check]

    def _point(self, batch_loss: float | None) -> CurvePoint:
        reading = self.monitor.reading() if self.monitor is not None else None
        return self._scored(self._unscored(batch_loss, reading))

    def _unscored(self, batch_loss: float | None, reading: NoiseReading | None) -> CurvePoint:
        """Where training stands now (the noise `reading` so far), before the data is scored."""
        return CurvePoint(
            step=self.step,
            examples=self.examples,
            seconds=self.seconds,
            lr=self.optimizer.param_groups[0]["lr"],
            batch_size=self.batch_size,
            train_loss=None,
            eval_loss=None,
            b_simple=reading.b_simple if reading is not None else None,
            batch_loss=batch_loss,
        )

    def _scored(self, point: CurvePoint) -> CurvePoint:
        """`point` with the model, as it stands, scored on the training sample and the evaluation set."""
        train_loss, metrics, self.eval_batch = evaluate_within_memory(
            self.model, self.workload, self.train_sample, batch_size=self.eval_batch, prefix="train_"
        )
        eval_loss: float | None = None
        if self.eval_data is not None:
            eval_loss, eval_metrics, self.eval_batch = evaluate_within_memory(
                self.model, self.workload, self.eval_data, batch_size=self.eval_batch
            )
            metrics.update(eval_metrics)
        return replace(point, train_loss=train_loss, eval_loss=eval_loss, metrics=metrics)

    def result(self, curve: list[CurvePoint], stop: str) -> TrainResult:
        rule, keep_model = self.rule, self.config.keep_model
        sharpness, final_gap = self.config.sharpness, self.config.final_gap
        if self.monitor is not None:  # the Hessian's backward passes below are not training steps
            self.monitor.close()
        final_train = None
        if final_gap and not self.diverged:
            final_train, _, self.eval_batch = evaluate_within_memory(
                self.model,
                self.workload,
                self.train_data.sample(FINAL_TRAIN_SAMPLE, SAMPLE_SEED),
                batch_size=self.eval_batch,
            )
        measured = None
        if sharpness and not self.diverged:
            started = clock(self.device)
            measured = {
                **minimum_sharpness(self.model, self.workload),
                "seconds": clock(self.device) - started,
            }
        last = curve[-1]
        hit = self.target_point
        reading = self.monitor.reading() if self.monitor is not None else None
        if self.noise_at_stop is not None:  # stopped at a kept point: the reading there
            reading = self.noise_at_stop
        return TrainResult(
            workload=self.workload.name,
            batch_size=self.schedule.initial_batch_size,
            micro_batch_size=self.schedule.initial_batch_size // (self.accumulation * self.world),
            accumulation=self.accumulation,
            lr=self.lr,
            lr_rule=rule.value,
            warmup_steps=self.warmup_steps,
            seed=self.seed,
            device=str(self.device),
            target=self.workload.target.to_dict(),
            steps=self.step,
            examples=self.examples,
            seconds=self.seconds,
            reached_target=hit is not None,
            steps_to_target=None if hit is None else hit.step,
            examples_to_target=None if hit is None else hit.examples,
            seconds_to_target=None if hit is None else hit.seconds,
            diverged=self.diverged,
            final_train_loss=finite_or_none(final_train),
            final_eval_loss=finite_or_none(last.eval_loss),
            final_metrics=dict(last.metrics),
            curve=tuple(curve),
            noise=noise_summary(reading),
            precision=self.precision.value,
            checkpoint=self.config.checkpoint,
            ghost_batch_size=self.config.ghost_batch_size,
            world_size=self.world,
            batch_schedule=self.schedule.to_dict() if len(self.schedule.phases) > 1 else None,
            sharpness=measured,
            checkpoints=tuple(self.saved),
            resumed_from=self.resumed_from,
            clipped_fraction=self.recipe.clipped_fraction,
            data_order=stream_order(self.workload.train_data) if self.workload.stream else None,
            tokens_per_example=self.workload.tokens_per_example,
            model=self.model if keep_model else None,
        )
