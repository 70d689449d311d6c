"""The training loop every run shares (segmentation, multi-domain, classifier pre-training):
the workdir's checkpoints and resume, the steps with their metrics, a stop on a non-finite
loss, SIGTERM / SIGINT, model selection and the final report. What a run trains is passed
in as callables (`train_one`, `evaluate`, `report`), as `Method` and `Dataset` pass theirs.
"""

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath

from cct_jax import checkpointing, config_drift, errors, parallel, watchdog
from cct_jax.state import TrainState
from cct_jax.writers import MetricWriter


class StopRequest:
  """SIGTERM / SIGINT ask the loop to save a checkpoint and return at the next step."""

  def __init__(self):
    self.requested = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name

  def agreed(self, sync: bool) -> bool:
    """Whether to stop after this step. A single process stops at once; several stop at
    the same step, agreeing on `sync` steps (the same on every process) by a collective,
    as a signal may reach only some of them."""
    if self.requested is not None:
      watchdog.kick()  # a step since the request: the stop is under way, not hung
    if jax.process_count() == 1:
      return self.requested is not None
    return sync and parallel.any_process(self.requested is not None)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def check_finite(history: list[tuple[int, dict]], last_good: int | None, directory: str):
  """Stops the run at the first non-finite metric, naming the step and what is kept."""
  for step, metrics in history:
    bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(v)}
    if bad:
      kept = (f'the last good checkpoint (step {last_good}) is kept in {directory}'
              if last_good is not None else 'no checkpoint was written before it')
      raise FloatingPointError(f'non-finite loss at step {step}: {bad}; training stopped, '
                               f'{kept}')


def profile_window(spec: str) -> tuple[int, int] | None:
  """`train.profile_steps` 'A:B' -> (A, B), the steps A+1..B traced; '' -> None."""
  if not spec:
    return None
  first, _, last = spec.partition(':')
  if not (first.isdigit() and last.isdigit() and int(first) < int(last)):
    raise errors.UserError(f"train.profile_steps={spec!r}: expected 'A:B' with 0 <= A < B "
                           "(steps A+1..B are traced), or '' for none")
  return int(first), int(last)


class StepProfiler:
  """A jax.profiler trace of the steps of `window` (`profile_window`) into `directory`, for
  TensorBoard's profile plugin or xprof. The first steps of a run compile, so a window
  after them shows the steady state; a run resumed past its start traces nothing."""

  def __init__(self, window: tuple[int, int] | None, directory: str):
    self.window, self.directory, self.tracing = window, directory, False

  def step_starts(self, step: int) -> None:
    if self.window is not None and step == self.window[0]:
      jax.profiler.start_trace(self.directory)
      self.tracing = True

  def step_done(self, done: int, outputs) -> None:
    if self.tracing and done == self.window[1]:
      jax.block_until_ready(outputs)  # the traced steps' device work, whole
      self.close()
      logging.info('profile of steps %d-%d written to %s (tensorboard --logdir %s, '
                   'Profile tab)', self.window[0] + 1, done, self.directory, self.directory)

  def close(self) -> None:
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False


@dataclasses.dataclass(frozen=True)
class Intervals:
  """Every how many steps the loop logs, evaluates (0: never), checkpoints and agrees
  on a stop across processes."""
  log: int
  checkpoint: int
  stop_check: int
  evaluate: int = 0

  @classmethod
  def of(cls, train_cfg) -> 'Intervals':
    return cls(log=train_cfg.log_every, checkpoint=train_cfg.checkpoint_every,
               stop_check=train_cfg.stop_check_every, evaluate=train_cfg.eval_every)


@dataclasses.dataclass(frozen=True)
class Checkpoints:
  """The latest checkpoints of a run (resumed from) and its best by the selection metric,
  kept apart; `abstract_state` is the restore target, laid out for the current mesh."""
  latest: Any
  best: Any
  abstract_state: Any
  select_metric: str = 'miou'

  def best_score(self) -> float:
    step = self.best.latest_step()
    return -np.inf if step is None else checkpointing.saved_metrics(
        self.best, step)[self.select_metric]

  def save_best(self, step: int, state, score: float) -> None:
    checkpointing.save(self.best, step, state, metrics={self.select_metric: score})

  def restore_best(self, state):
    """The best checkpoint, or `state` where the run kept none (no model selection)."""
    if self.best.latest_step() is None:
      return state
    return checkpointing.restore(self.best, self.abstract_state)


def open_run(config, workdir: str, create_state: Callable[[bool], TrainState], *, mesh,
             max_checkpoints: int, select_metric: str = 'miou'):
  """The run in `workdir` (a folder or gs://...): its writer, its checkpoints and the state
  to train from: the latest checkpoint's (after checking that `config` shapes the state it
  was saved from), or with none `create_state(True)`, a new run's state with its starting
  weights. Returns (writer, checkpoints, state)."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  latest = checkpointing.manager(os.path.join(workdir, 'checkpoints'), max_checkpoints)
  resumed_step = checkpointing.latest_step(latest)
  if resumed_step is not None:
    config_drift.check_against_saved(config, workdir, purpose='resume')
  writer.write_config(config)
  state = create_state(resumed_step is None)  # no weights read only to be overwritten
  checkpoints = Checkpoints(
      latest=latest,
      best=checkpointing.manager(os.path.join(workdir, 'best'), max_to_keep=1),
      abstract_state=checkpointing.abstract_with_sharding(state, parallel.replicated(mesh)),
      select_metric=select_metric)
  if resumed_step is None:
    return writer, checkpoints, state
  logging.info('resumed from step %d in %s', resumed_step, latest.directory)
  return writer, checkpoints, checkpointing.restore(checkpoints.latest,
                                                    checkpoints.abstract_state)


def train_loop(state: TrainState, *, num_steps: int,
               train_one: Callable[[TrainState, int], tuple[TrainState, dict]],
               evaluate: Callable[[TrainState, int], float] | None,
               checkpoints: Checkpoints, writer: MetricWriter, every: Intervals,
               images_per_step: float,
               profiler: StepProfiler | None = None) -> tuple[TrainState, bool]:
  """From `state.step` to `num_steps`: metrics fetched from the devices every `every.log`
  steps (a non-finite one stops the run), `evaluate(state, step)` (the selection score)
  every `every.evaluate` steps with the best kept apart, the state saved every
  `every.checkpoint`, the steps of `profiler`'s window traced. Returns (state, whether a
  stop was requested)."""
  profiler = profiler or StepProfiler(None, '')
  last_good = checkpointing.latest_step(checkpoints.latest)
  best_score = checkpoints.best_score()
  history: list[tuple[int, Any]] = []  # device metrics, fetched at the next flush

  def flush_metrics():
    fetched = [(s, jax.device_get(m)) for s, m in history]
    history.clear()
    check_finite(fetched, last_good, checkpoints.latest.directory)
    writer.write_scalars(fetched)

  writer.start(int(state.step), num_steps, images_per_step)
  first_step = int(state.step)
  with StopRequest() as stop, contextlib.closing(profiler):
    for step in range(first_step, num_steps):
      if step == first_step:
        logging.info('compiling the train step (the first step waits for it)')
        started = time.perf_counter()
      profiler.step_starts(step)
      state, metrics = train_one(state, step)
      profiler.step_done(step + 1, metrics)
      if step == first_step:
        jax.block_until_ready(metrics)
        logging.info('first step done in %.1f s, compiling included',
                     time.perf_counter() - started)
      history.append((step + 1, metrics))
      done, last = step + 1, step + 1 == num_steps
      stopping = stop.agreed(sync=done % every.stop_check == 0)

      if done % every.log == 0 or last:
        flush_metrics()
      if evaluate is not None and every.evaluate and (done % every.evaluate == 0 or last):
        flush_metrics()
        score = evaluate(state, done)
        if score > best_score:
          best_score = score
          checkpoints.save_best(done, state, score)
      if done % every.checkpoint == 0 or last or stopping:
        flush_metrics()
        checkpointing.save(checkpoints.latest, done, state)
        last_good = done
      if stopping:
        logging.warning('%s received: saved step %d in %s; run again to resume.',
                        stop.requested or 'a stop request (by another process)', done,
                        checkpoints.latest.directory)
        return state, True
  return state, False


def finish(state: TrainState, stopped: bool, *, checkpoints: Checkpoints,
           report: Callable[[TrainState], dict], writer: MetricWriter) -> dict:
  """The run's results: `report` of the best checkpoint (else the last state), or
  {'stopped_at': step} after a stop request, which reports nothing."""
  results = ({'stopped_at': int(state.step)} if stopped
             else report(checkpoints.restore_best(state)))
  writer.close()
  return results
