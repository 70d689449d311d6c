"""Training, written once: the `Trainer` skeleton and the single-domain run
`train_and_evaluate(config, workdir)` (paper sec. 3.2), around CCT's train step
(train_step.py, which imports no data library so that the step runs where they are absent).

Every run goes through the same phases (`Trainer.run`): logging, mesh, state, checkpoints
and resume, data streams and the jitted step, the loop (metrics, the stop on a non-finite
loss, SIGTERM, model selection on val, checkpoints), then the best checkpoint scored on the
reported split. A variant overrides only the hooks that differ: the multi-domain run
(multidomain.py) and classification pre-training (classify.py).

One iteration is one labelled and, when the method uses them, one unlabelled batch. The
labelled batch trains the encoder and main decoder with L_s; the unlabelled batch goes
through the encoder in a separate pass (its own BN statistics, as the authors' code,
github.com/yassouali/CCT) and trains what the method's term trains, weighted by the ramp
w_u(t) (Eq. 3). `train.mode` picks the method (methods/).
"""

import abc
import os
import signal
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from cct_jax import (checkpointing, config_drift, evaluate, methods, parallel, perturbations,
                     progress, state as state_lib, train_step, visualize, watchdog)
from cct_jax.data import factory as data_factory, pipeline as data_pipeline
from cct_jax.models import pretrained
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


def save_prediction_panel(data_cfg, writer, tag: str, step: int, samples) -> str | None:
  """image | ground truth | prediction rows, to `workdir/predictions_<tag>.png` and
  TensorBoard; nothing when there are no samples (`train.num_pictures=0`)."""
  if not samples:
    return None
  picture = visualize.panel(
      [visualize.denormalise(image, data_cfg.mean, data_cfg.std) for image in samples['image']],
      samples['mask'], samples['prediction'], visualize.palette())
  writer.write_images(step, f'{tag}/predictions', picture[None])
  return writer.write_png(f'predictions_{tag}.png', picture)


def average_scores(results: dict) -> dict:
  """mIoU and pixel accuracy averaged over evaluation targets (domains; Tables 2-3)."""
  return {key: float(np.mean([scores[key] for scores in results.values()]))
          for key in ('miou', 'pixel_accuracy')}


def average_tag(results: dict) -> str:
  return 'average/' + '+'.join(sorted({scores['split'] for scores in results.values()}))


class Trainer(abc.ABC):
  """The phases of a training run. Subclasses provide the hooks below `run`; this class's
  own versions are the segmentation network's (this module's single-domain run and the
  multi-domain one). `self.targets` maps an evaluation target (a domain; None for a
  single-domain run) to its config view, whose `data` and `eval` it is scored with."""

  subdir = ''  # where under the workdir the run writes (classification: 'classifier')

  def __init__(self, config, workdir: str):
    self.check_config(config)
    self.config = config
    self.workdir = os.path.join(workdir, self.subdir) if self.subdir else workdir
    self.mesh = parallel.data_mesh()
    self.writer = None
    self._eval_sets = {}  # (target, split) -> its evaluation batches, built once
    self.eval_steps = {}  # target -> its jitted evaluation step

  # Hooks every variant provides.
  @abc.abstractmethod
  def check_config(self, config) -> None:
    """Raises on a config the variant cannot run, before anything starts."""

  @abc.abstractmethod
  def num_steps(self) -> int:
    """The run's number of optimiser steps."""

  @abc.abstractmethod
  def create_state(self, num_steps: int) -> TrainState:
    """The initial state, replicated on the mesh, for an optimiser of `num_steps`."""

  @abc.abstractmethod
  def start(self, num_steps: int, first_step: int) -> None:
    """Opens the data streams at `first_step` and builds the jitted step."""

  @abc.abstractmethod
  def train_one(self, state: TrainState, step: int) -> tuple[TrainState, dict]:
    """Draws this step's batches and takes the step."""

  @abc.abstractmethod
  def images_per_step(self) -> float:
    """Images one step reads, for the progress line."""

  @abc.abstractmethod
  def stop(self) -> None:
    """Closes the data streams."""

  # Hooks with the segmentation network's defaults.
  def loop_config(self) -> ml_collections.ConfigDict:
    return self.config.train

  def fresh_start(self, state: TrainState) -> TrainState:
    """The state of a run with no checkpoint yet, before its first step."""
    return state

  @property
  def targets(self) -> dict:
    return {None: self.config}

  def predict_fn(self, target):
    """(state, images, sizes) -> class probabilities of `target`, its configured
    inference."""
    return self.predict_fns[target]

  def select(self, state: TrainState, step: int) -> float:
    """Scores every target on its first evaluation split; the average mIoU selects the
    best checkpoint."""
    results = self.evaluate_targets(state, step, role=0)
    average = average_scores(results)
    if len(results) > 1:
      self.writer.write_eval(step, average_tag(results), average)
    return average['miou']

  def report(self, state: TrainState) -> dict:
    """The best checkpoint scored on every target's reported split."""
    results = self.evaluate_targets(state, int(state.step), role=-1)
    (scores,) = results.values()
    path = self.writer.write_json(f'results_{scores["split"]}.json', scores)
    logging.info('%s scores of the best checkpoint (step %d), written to %s:\n%s',
                 scores['split'], int(state.step), path, evaluate.format_table(scores))
    return scores

  # The skeleton.
  def evaluate_targets(self, state: TrainState, step: int, role: int) -> dict:
    """Every target scored on its evaluation split number `role` (0: model selection,
    -1: reported), written to TensorBoard and metrics.jsonl with its pictures."""
    results = {}
    for target, view in self.targets.items():
      split = data_factory.eval_splits(view.data)[role]
      scores, samples = self.evaluate(target, state, split, self.config.train.num_pictures)
      tag = split if target is None else f'{target}/{split}'
      self.writer.write_eval(step, tag, scores)
      save_prediction_panel(view.data, self.writer, tag.replace('/', '_'), step, samples)
      results[target] = dict(scores, split=split, step=step)
    return results

  def evaluate(self, target, state, split: str, num_samples: int = 0):
    """`target` scored on `split`: (scores, samples; see evaluate.evaluate_split)."""
    view = self.targets[target]
    if (target, split) not in self._eval_sets:
      self._eval_sets[target, split] = data_pipeline.make_eval_dataset(
          view.data, split, device_count=jax.device_count(),
          process_index=jax.process_index(), process_count=jax.process_count())
    if target not in self.eval_steps:
      self.eval_steps[target] = evaluate.make_eval_step(
          self.predict_fn(target), view.model.num_classes, self.mesh)
    dataset = self._eval_sets[target, split]
    what = f'{split} evaluation' if target is None else f'{target} {split} evaluation'
    reporter = progress.Reporter(len(dataset), unit='batches', what=what)
    return evaluate.evaluate_split(
        self.eval_steps[target], state, dataset, self.mesh, view.model.num_classes,
        data_factory.class_names(view.data), num_samples, reporter)

  def run(self) -> dict:
    """Trains from the workdir's latest checkpoint (or from the start), evaluating for
    model selection every `eval_every` steps; returns the final report (or
    {'stopped_at': step} after SIGTERM / SIGINT)."""
    epath.Path(self.workdir).mkdir(parents=True, exist_ok=True)  # a folder or gs://...
    self.writer = MetricWriter(self.workdir, enabled=jax.process_index() == 0)
    loop = self.loop_config()
    num_steps = self.num_steps()
    state = self.create_state(num_steps)

    # Checkpoints: resume from the latest (written with a config that shapes the same
    # state); the best by val mIoU lives apart.
    rep = parallel.replicated(self.mesh)
    latest = checkpointing.manager(os.path.join(self.workdir, 'checkpoints'),
                                   loop.max_checkpoints)
    best = checkpointing.manager(os.path.join(self.workdir, 'best'), max_to_keep=1)
    abstract_state = checkpointing.abstract_with_sharding(state, rep)
    last_good = checkpointing.latest_step(latest)
    if last_good is not None:
      config_drift.check_against_saved(self.config, self.workdir, purpose='resume')
    self.writer.write_config(self.config)
    if last_good is None:
      state = self.fresh_start(state)
    else:
      state = checkpointing.restore(latest, abstract_state)
      logging.info('resumed from step %d in %s', last_good, latest.directory)

    # The data streams are random-access: the step alone says where they stand, so resuming
    # needs no iterator state and works with any number of workers, processes or devices.
    self.start(num_steps, int(state.step))
    try:
      state, stopped = self._loop(loop, state, num_steps, latest, best, last_good)
    finally:
      self.stop()
    if stopped:
      self.writer.close()
      return {'stopped_at': int(state.step)}
    if best.latest_step() is not None:  # model selection on val
      state = checkpointing.restore(best, abstract_state)
    results = self.report(state)
    self.writer.close()
    return results

  def _loop(self, loop, state, num_steps: int, latest, best, last_good: int | None):
    """From `state.step` to `num_steps`: metrics fetched from the devices every
    `log_every` steps (a non-finite one stops the run), model selection every `eval_every`
    (0: none), the state saved every `checkpoint_every`. Returns (state, stopped)."""
    best_step = best.latest_step()
    best_miou = (-1.0 if best_step is None
                 else checkpointing.saved_metrics(best, best_step)['miou'])
    history: list[tuple[int, Any]] = []  # device metrics, fetched at the next flush

    def flush_metrics():
      fetched = [(s, jax.device_get(m)) for s, m in history]
      history.clear()
      check_finite(fetched, last_good, latest.directory)
      self.writer.write_scalars(fetched)

    self.writer.start(int(state.step), num_steps, self.images_per_step())
    with StopRequest() as stop:
      for step in range(int(state.step), num_steps):
        state, metrics = self.train_one(state, step)
        history.append((step + 1, metrics))
        done, last = step + 1, step + 1 == num_steps
        stopping = stop.agreed(sync=done % loop.stop_check_every == 0)

        if done % loop.log_every == 0 or last:
          flush_metrics()
        if loop.eval_every and (done % loop.eval_every == 0 or last):
          flush_metrics()
          miou = self.select(state, done)
          if miou > best_miou:
            best_miou = miou
            checkpointing.save(best, done, state, metrics={'miou': best_miou})
        if done % loop.checkpoint_every == 0 or last or stopping:
          flush_metrics()
          checkpointing.save(latest, done, state)
          last_good = done
        if stopping:
          logging.warning('%s received: saved step %d in %s; run again to resume.',
                          stop.requested or 'a stop request (by another process)', done,
                          latest.directory)
          return state, True
    return state, False

  def restore(self, purpose: str = 'eval', step: int | None = None) -> TrainState:
    """The best checkpoint in the workdir (else the latest; or `step`), for eval and
    prediction (`purpose`), after checking that the config shapes the state it was saved
    from."""
    config_drift.check_against_saved(self.config, self.workdir, purpose=purpose)
    # The optimiser's schedule is not run: any step count shapes the state.
    template = self.create_state(max(self.config.train.num_steps, 1))
    return state_lib.restore_best_or_latest(template, self.workdir, step)

  def evaluate_checkpoint(self, target_names=None) -> dict:
    """`--mode=eval`: every evaluation split of every target (or of those named) scored
    with the configured inference; a table and eval_[<target>_]<split>.json each."""
    state = self.restore()
    self.writer = MetricWriter(self.workdir, enabled=jax.process_index() == 0)
    all_results = {}
    for target, view in self.targets.items():
      if target_names is not None and target not in target_names:
        continue
      for split in data_factory.eval_splits(view.data):
        scores, _ = self.evaluate(target, state, split)
        scores.update(split=split, step=int(state.step), scales=list(view.eval.scales),
                      flip=view.eval.flip)
        name = split if target is None else f'{target}_{split}'
        path = self.writer.write_json(f'eval_{name}.json', scores)
        if self.writer.enabled:  # process 0
          print(f'{name.replace("_", " ")} (step {int(state.step)}), written to {path}:\n'
                f'{evaluate.format_table(scores)}')
        all_results.setdefault(target, {})[split] = scores
    self.writer.close()
    return all_results


def check_config(config) -> None:
  """Mistakes in a single-domain config that would otherwise surface deep in a run."""
  data_factory.check_data_config(config.data)
  methods.check_config(config)
  if config.model.num_classes != config.data.num_classes:
    raise ValueError(f'model.num_classes={config.model.num_classes} but data.num_classes='
                     f'{config.data.num_classes} ({config.data.name})')
  perturbations.build_perturbations(config.perturbations)  # unknown types, VAT method
  pretrained.check_pretrained_config(config.model)
  if config.model.encoder_from and config.model.pretrained not in (pretrained.REQUIRED,
                                                                   pretrained.FROM_SCRATCH):
    raise ValueError('model.encoder_from and model.pretrained both set: start from one')


def total_steps(config, num_unlabelled: int) -> int:
  """`train.num_steps`, or `train.num_epochs` passes over the unlabelled set."""
  if config.train.num_steps > 0:
    return config.train.num_steps
  steps_per_epoch = -(-num_unlabelled // config.data.batch_size_unlabelled)
  return config.train.num_epochs * steps_per_epoch


def labelled_batch(mesh, host_batch: dict) -> dict:
  return parallel.global_batch(mesh, {k: host_batch[k] for k in ('image', 'mask')})


class SingleDomainTrainer(Trainer):
  """CCT (or the configured method) on one dataset."""

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    self.model, self.method = methods.build(config)
    self.predict_fns = {target: self.make_predict_fn(target) for target in self.targets}

  def make_predict_fn(self, target):
    del target
    return train_step.make_predict_fn(self.config, self.model)

  def check_config(self, config) -> None:
    check_config(config)

  def num_steps(self) -> int:
    num_unlabelled = len(data_factory.make_source(self.config.data, 'train_unlabelled'))
    return total_steps(self.config, num_unlabelled)

  def create_state(self, num_steps: int) -> TrainState:
    return train_step.create_train_state(self.config, self.model, num_steps, self.mesh)

  def fresh_start(self, state: TrainState) -> TrainState:
    if self.config.model.encoder_from:
      return state_lib.with_encoder_from(state, self.config.model.encoder_from, self.mesh,
                                         self.method.init_extra)
    return state

  def draw(self, streams, data_cfg) -> tuple[dict, dict | None]:
    """The global (labelled, unlabelled) batches of one step from `streams`; the time spent
    waiting for them goes on the progress line."""
    host, waited = progress.timed_next(streams.labelled)
    labelled = labelled_batch(self.mesh, host)
    keys = self.method.unlabelled_keys(data_cfg)
    unlabelled = None
    if keys:
      host, waited_unlabelled = progress.timed_next(streams.unlabelled)
      waited += waited_unlabelled
      unlabelled = parallel.global_batch(self.mesh, {k: host[k] for k in keys})
    self.writer.add_input_wait(waited)
    return labelled, unlabelled

  def start(self, num_steps: int, first_step: int) -> None:
    logging.info('labelled images: %s', data_factory.split_rule(self.config.data))
    self.streams = data_pipeline.make_train_streams(
        self.config.data, device_count=jax.device_count(), process_index=jax.process_index(),
        process_count=jax.process_count(), start_step=first_step)
    self.step_fn = train_step.jit_train_step(
        train_step.make_train_step(self.config, self.model, num_steps), self.mesh,
        self.method.uses_unlabelled)

  def train_one(self, state, step):
    return self.step_fn(state, *self.draw(self.streams, self.config.data))

  def images_per_step(self) -> float:
    data = self.config.data
    return data.batch_size_labelled + self.method.uses_unlabelled * data.batch_size_unlabelled

  def stop(self) -> None:
    self.streams.close()



def train_and_evaluate(config, workdir: str) -> dict:
  """Trains, evaluates on val every `train.eval_every` steps (the best checkpoint by val
  mIoU kept apart from the latest), then scores the best checkpoint on the dataset's
  reported split. Resumes from `workdir` when it holds a checkpoint. Returns the final
  results (or {'stopped_at': step} after SIGTERM / SIGINT)."""
  return SingleDomainTrainer(config, workdir).run()


def evaluate_checkpoint(config, workdir: str) -> dict:
  """`--mode=eval`: every evaluation split scored with the configured inference
  (`config.eval`: scales, flip, sliding window); a table per split and eval_<split>.json.
  Returns {split: scores}."""
  return SingleDomainTrainer(config, workdir).evaluate_checkpoint()[None]
