"""What a segmentation run is, without its training loop: the network and method a config
builds, its evaluation targets (one, or one per domain), their prediction functions, the
initial and the restored state, and scoring. Training (train.py), `--mode=eval`,
prediction (predict.py) and the tools use these pieces alike.
"""

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from cct_jax import (config_drift, errors, evaluate, loop, methods, multidomain, parallel,
                     perturbations, progress, state as state_lib, train_step, visualize)
from cct_jax.data import factory as data_factory, pipeline as data_pipeline
from cct_jax.models import pretrained
from cct_jax.state import TrainState
from cct_jax.writers import MetricWriter


def check_single_domain(config) -> None:
  """Mistakes in a single-domain config (or a domain's view) that would otherwise surface
  deep in a run."""
  data_factory.check_data_config(config.data)
  methods.check_config(config)
  if config.model.num_classes != config.data.num_classes:
    raise errors.UserError(f'model.num_classes={config.model.num_classes} but data.num_classes='
                           f'{config.data.num_classes} ({config.data.name})')
  perturbations.build_perturbations(config.perturbations)  # unknown types, VAT method
  loop.profile_window(config.train.profile_steps)
  pretrained.check_pretrained_config(config.model)
  if config.model.encoder_from and config.model.pretrained not in (pretrained.REQUIRED,
                                                                   pretrained.FROM_SCRATCH):
    raise errors.UserError('model.encoder_from and model.pretrained both set: start from one')


def check_config(config) -> None:
  """A single-domain config's mistakes, or a multi-domain one's and each domain's view's."""
  if 'domains' in config:
    multidomain.check_domains(config)
  for view in targets(config).values():
    check_single_domain(view)


def targets(config) -> dict[str | None, ml_collections.ConfigDict]:
  """Evaluation target -> the config view it trains and is scored with: the config itself
  under None, or each domain's single-domain view under its name."""
  if 'domains' not in config:
    return {None: config}
  return {name: multidomain.domain_config(config, name)
          for name in multidomain.domain_names(config)}


@dataclasses.dataclass(frozen=True)
class Segmentation:
  """The network `config` builds, its method, its targets and the device mesh."""
  config: ml_collections.ConfigDict
  model: Any
  method: methods.Method
  targets: dict
  mesh: Any

  @property
  def multi_domain(self) -> bool:
    return None not in self.targets

  def create_state(self, num_steps: int, starting_weights: bool = True) -> TrainState:
    """The initial state, replicated on the mesh, for an optimiser of `num_steps` steps;
    with `starting_weights`, a new run's (train_step.create_train_state)."""
    create = (multidomain.create_train_state if self.multi_domain
              else train_step.create_train_state)
    return create(self.config, self.model, self.method, num_steps, self.mesh,
                  starting_weights=starting_weights)

  def train_step(self, target, num_steps: int):
    """The jitted-to-be step that trains `target`: (state, labelled, unlabelled) ->
    (state, metrics)."""
    if self.multi_domain:
      return multidomain.make_domain_step(self.config, self.model, self.method, target,
                                          num_steps)
    return train_step.make_train_step(self.config, self.model, self.method, num_steps)

  def predict_fn(self, target):
    """(state, images, sizes) -> class probabilities with `target`'s configured inference
    (its decoders and BN statistics in a multi-domain network)."""
    view = self.targets[target]
    if not self.multi_domain:
      return train_step.make_predict_fn(view, self.model, self.method)
    predict = train_step.make_predict_fn(view, self.model.clone(domain=target), self.method)
    return lambda state, images, sizes=None: predict(
        multidomain.domain_state(self.config, state, target), images, sizes)

  def restore(self, workdir: str, purpose: str, step: int | None = None) -> TrainState:
    """The best checkpoint in `workdir` (else the latest; or `step`), for eval and
    prediction (`purpose`), after checking that the config shapes the state it was saved
    from."""
    state_lib.checkpoint_to_restore(workdir, step)  # before seconds of building the state
    config_drift.check_against_saved(self.config, workdir, purpose=purpose)
    # The optimiser's schedule is not run: any step count shapes the state.
    template = self.create_state(max(self.config.train.num_steps, 1), starting_weights=False)
    return state_lib.restore_best_or_latest(template, workdir, step)


def build(config) -> Segmentation:
  """The segmentation run `config` describes, after checking it."""
  check_config(config)
  model, method = methods.build(config)
  return Segmentation(config, model, method, targets(config), parallel.data_mesh())


def save_prediction_panel(data_cfg, writer: MetricWriter, tag: str, step: int,
                          samples) -> str | None:
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


class Evaluator:
  """Scores a run's targets on their splits, building each split's batches and each
  target's jitted evaluation step once."""

  def __init__(self, task: Segmentation):
    self.task = task
    self._datasets = {}  # (target, split) -> its evaluation batches
    self.steps = {}  # target -> its jitted evaluation step

  def score(self, target, state: TrainState, split: str, num_samples: int = 0):
    """`target` scored on `split`: (scores, samples; see evaluate.evaluate_split)."""
    view = self.task.targets[target]
    if (target, split) not in self._datasets:
      self._datasets[target, split] = data_pipeline.make_eval_dataset(
          view.data, split, device_count=jax.device_count(),
          process_index=jax.process_index(), process_count=jax.process_count())
    if target not in self.steps:
      self.steps[target] = evaluate.make_eval_step(
          self.task.predict_fn(target), view.model.num_classes, self.task.mesh)
    dataset = self._datasets[target, split]
    what = f'{split} evaluation' if target is None else f'{target} {split} evaluation'
    reporter = progress.Reporter(len(dataset), unit='batches', what=what)
    return evaluate.evaluate_split(
        self.steps[target], state, dataset, self.task.mesh, view.model.num_classes,
        data_factory.class_names(view.data), num_samples, reporter)

  def score_targets(self, state: TrainState, step: int, role: int, writer: MetricWriter,
                    num_pictures: int = 0) -> dict:
    """Every target scored on its evaluation split number `role` (0: model selection,
    -1: reported), written to TensorBoard and metrics.jsonl with its pictures."""
    results = {}
    for target, view in self.task.targets.items():
      split = data_factory.eval_splits(view.data)[role]
      scores, samples = self.score(target, state, split, num_pictures)
      tag = split if target is None else f'{target}/{split}'
      writer.write_eval(step, tag, scores)
      save_prediction_panel(view.data, writer, tag.replace('/', '_'), step, samples)
      results[target] = dict(scores, split=split, step=step)
    return results

  def select(self, state: TrainState, step: int, writer: MetricWriter,
             num_pictures: int) -> float:
    """Model selection: the average mIoU over the targets' first evaluation splits."""
    results = self.score_targets(state, step, role=0, writer=writer, num_pictures=num_pictures)
    average = average_scores(results)
    if len(results) > 1:
      writer.write_eval(step, average_tag(results), average)
    return average['miou']

  def report(self, state: TrainState, writer: MetricWriter, num_pictures: int) -> dict:
    """The final scores on every target's reported split: results_<split>.json for one
    target; results.json with each domain's and their average (Tables 2-3) for several."""
    step = int(state.step)
    results = self.score_targets(state, step, role=-1, writer=writer,
                                 num_pictures=num_pictures)
    if not self.task.multi_domain:
      (scores,) = results.values()
      path = writer.write_json(f'results_{scores["split"]}.json', scores)
      logging.info('%s scores of the best checkpoint (step %d), written to %s:\n%s',
                   scores['split'], step, path, evaluate.format_table(scores))
      return scores
    for name, scores in results.items():
      logging.info('%s %s scores of the best checkpoint (step %d):\n%s', name,
                   scores['split'], step, evaluate.format_table(scores))
    averaged = {'domains': results, 'step': step, **average_scores(results)}
    writer.write_eval(step, average_tag(results), averaged)
    path = writer.write_json('results.json', averaged)
    logging.info('average mIoU over %s: %.1f (step %d), written to %s', ', '.join(results),
                 100 * averaged['miou'], step, path)
    return averaged
