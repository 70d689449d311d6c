"""CCT training and evaluation (paper sec. 3.2, SPEC 4): `train_and_evaluate(config, workdir)`.

Read top to bottom in phases: logging, mesh, input, model and state, the jitted step,
checkpoints and resume, the loop with its evaluations, the final test evaluation.

One iteration is one labelled and one unlabelled batch. The labelled batch trains the
encoder and main decoder with L_s; the unlabelled batch goes through the encoder in a
separate pass (its own BN statistics, as the authors' code) and trains the encoder and the
auxiliary decoders with the ramped consistency loss w_u(t) L_u (Eq. 3). `train.mode` picks
the unsupervised term: CCT ('semi'), none ('supervised'), or one of the input-consistency
baselines of App. A ('mean_teacher', 'input_vat'; baselines.py).
"""

import os
import signal
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from flax.training import train_state

from cct_jax import (baselines, checkpointing, evaluate, losses, models, parallel,
                     perturbations, schedules, visualize)
from cct_jax.data import factory as data_factory
from cct_jax.data import voc
from cct_jax.models import cct, pretrained
from cct_jax.writers import MetricWriter


MODES = ('semi', 'supervised', 'mean_teacher', 'input_vat')


class TrainState(train_state.TrainState):
  batch_stats: Any


class MeanTeacherState(TrainState):
  """`train.mode='mean_teacher'`: the teacher, the EMA {'params', 'batch_stats'} of the
  student, is saved and restored with the rest (a class of its own keeps the other modes'
  checkpoints as they are)."""
  teacher: Any


def teacher_of(state: TrainState):
  """Mean Teacher's teacher variables; None for the other methods."""
  return state.teacher if isinstance(state, MeanTeacherState) else None


def check_config(config) -> None:
  """Mistakes that would otherwise surface deep in a run, or never."""
  if config.train.mode not in MODES:
    raise ValueError(f'train.mode must be one of {MODES}, got {config.train.mode!r}')
  if config.model.num_classes != config.data.num_classes:
    raise ValueError(f'model.num_classes={config.model.num_classes} but data.num_classes='
                     f'{config.data.num_classes} ({config.data.name})')
  perturbations.build_perturbations(config.perturbations)  # unknown types, VAT method
  if config.model.encoder_from and config.model.pretrained:
    raise ValueError('model.encoder_from and model.pretrained both set: start from one')
  if config.data.pseudo_labels and config.train.mode != 'semi':
    raise ValueError("data.pseudo_labels train the auxiliary decoders: train.mode='semi'")
  baselines.check_config(config.baselines)


def aux_counts(config) -> dict[str, int]:
  """The auxiliary decoders the run trains: none for the supervised baseline."""
  return dict(config.perturbations.counts) if config.train.mode == 'semi' else {}


def uses_unlabelled(config) -> bool:
  return config.train.mode != 'supervised'


def total_steps(config, num_unlabelled: int) -> int:
  """`train.num_steps`, or `train.num_epochs` passes over the unlabelled set (SPEC 4)."""
  if config.train.num_steps > 0:
    return config.train.num_steps
  steps_per_epoch = -(-num_unlabelled // config.data.batch_size_unlabelled)
  return config.train.num_epochs * steps_per_epoch


def create_train_state(config, model, num_steps: int, mesh) -> TrainState:
  """The initial state, born replicated on the mesh; trunk weights loaded when configured."""

  def init(key):
    variables = models.init_variables(model, key, (1, 64, 64, 3))
    fields = dict(apply_fn=model.apply, params=variables['params'],
                  batch_stats=variables['batch_stats'],
                  tx=schedules.make_optimizer(config.optim, num_steps))
    if config.train.mode == 'mean_teacher':
      return MeanTeacherState.create(**fields, teacher=baselines.initial_teacher(
          variables['params'], variables['batch_stats']))
    return TrainState.create(**fields)

  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  state = jax.jit(init, out_shardings=parallel.replicated(mesh))(key)
  if config.model.pretrained:
    trunk = {'params': state.params['encoder']['trunk'],
             'batch_stats': state.batch_stats['encoder']['trunk']}
    loaded = pretrained.load_trunk_weights(jax.device_get(trunk), config.model.pretrained,
                                           stem=config.model.stem)
    params = dict(state.params, encoder=dict(state.params['encoder'], trunk=loaded['params']))
    stats = dict(state.batch_stats,
                 encoder=dict(state.batch_stats['encoder'], trunk=loaded['batch_stats']))
    state = state.replace(params=params, batch_stats=stats)
    state = state.replace(opt_state=state.tx.init(state.params))
    if isinstance(state, MeanTeacherState):
      state = state.replace(teacher=baselines.initial_teacher(params, stats))
    state = jax.device_put(state, parallel.replicated(mesh))
  return state


def with_encoder_from(state: TrainState, run_dir: str, mesh) -> TrainState:
  """`state` with the encoder of a classification pre-training run (sec. 3.3)."""
  saved = checkpointing.restore_arrays(os.path.join(run_dir, 'checkpoints'))
  encoder = {'params': saved['params']['encoder'],
             'batch_stats': saved['batch_stats']['encoder']}
  expected = {'params': state.params['encoder'], 'batch_stats': state.batch_stats['encoder']}
  shapes = lambda tree: jax.tree_util.tree_map_with_path(
      lambda path, x: (jax.tree_util.keystr(path), x.shape), tree)
  if jax.tree.leaves(shapes(encoder)) != jax.tree.leaves(shapes(expected)):
    raise ValueError(f'{run_dir}: its encoder does not match config.model (pre-trained with '
                     'another model config?)')
  params = dict(state.params, encoder=encoder['params'])
  stats = dict(state.batch_stats, encoder=encoder['batch_stats'])
  state = state.replace(params=params, batch_stats=stats, opt_state=state.tx.init(params))
  return jax.device_put(state, parallel.replicated(mesh))


def supervised_loss(config, logits, labels, step, num_steps):
  if config.loss.supervised == 'ab_ce':
    threshold = schedules.ab_ce_threshold(
        step, total_steps=num_steps, num_classes=config.model.num_classes,
        cap=config.loss.ab_ce.cap, ramp_fraction=config.loss.ab_ce.ramp_fraction)
    return losses.ab_cross_entropy(logits, labels, threshold)
  if config.loss.supervised == 'ce':
    return losses.cross_entropy(logits, labels)
  raise ValueError(f"loss.supervised must be 'ce' or 'ab_ce', got {config.loss.supervised!r}")


def unsupervised_loss(config, aux: dict[str, jax.Array], main_logits, key):
  """L_u averaged over all K auxiliary decoders (Eq. 2), plus the optional pairwise term.

  Each perturbation type's mean is weighted by its count, so the result is the mean over
  the K decoders without concatenating K full-resolution predictions.
  """
  threshold = (config.loss.confidence_threshold if config.loss.confidence_masking else None)
  counts = {name: logits.shape[0] for name, logits in aux.items()}
  loss_u = sum(counts[name] * losses.consistency_loss(logits, main_logits,
                                                      config.loss.unsupervised, threshold)
               for name, logits in aux.items()) / sum(counts.values())
  pairwise = jnp.zeros(())
  if config.loss.pairwise_weight > 0:
    stacked = jnp.concatenate(list(aux.values()), axis=0)
    pairwise = losses.pairwise_loss(stacked, key, config.loss.pairwise_decoders)
  return loss_u, pairwise


def weak_loss(aux: dict[str, jax.Array], pseudo_labels: jax.Array) -> jax.Array:
  """L_w over all K auxiliary decoders (Eq. 6), each type's mean weighted by its count;
  the logits are brought to the pseudo-labels' size first."""
  counts = {name: logits.shape[0] for name, logits in aux.items()}
  size = pseudo_labels.shape[1:3]
  return sum(counts[name] * losses.weak_loss(cct.resize_logits(logits, size), pseudo_labels)
             for name, logits in aux.items()) / sum(counts.values())


def cct_term(config, model):
  """CCT's unsupervised terms (baselines.py has the signature): the auxiliary decoders on
  perturbed copies of z against the main decoder, the pairwise loss when weighted, and L_w
  when the batch carries pseudo-labels."""
  perturbation_fns = perturbations.build_perturbations(config.perturbations)

  def term(params, batch_stats, teacher, batch, key):
    del teacher
    (main_u, aux), updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, batch['image'], train=True,
        perturbations=perturbation_fns, key=jax.random.fold_in(key, 0), resize=False,
        mutable=['batch_stats', 'losses'])
    loss_u, pairwise = unsupervised_loss(config, aux, main_u, jax.random.fold_in(key, 1))
    terms = {'unsup': loss_u}
    if config.loss.pairwise_weight > 0:
      terms['pairwise'] = pairwise
    if 'mask' in batch:  # pseudo-labels of a weak set (Eq. 5): auxiliary decoders only
      terms['weak'] = weak_loss(aux, batch['mask'])
    return terms, updates

  return term


def unsupervised_term(config, model):
  """The unsupervised term of `train.mode`; None for the supervised baseline."""
  terms = {'semi': cct_term, 'mean_teacher': baselines.mean_teacher_term,
           'input_vat': baselines.input_vat_term}
  return terms[config.train.mode](config, model) if uses_unlabelled(config) else None


def term_weights(config, step, num_steps: int) -> dict:
  """The weight of each unsupervised term at `step`: w_u(t) for the consistency loss
  (Eq. 3), w_w(t) for L_w (the same ramp to `loss.weak_weight`), a constant for the
  pairwise loss."""
  ramp = lambda final: schedules.ramp_weight(
      step, final_weight=final, total_steps=num_steps, ramp_fraction=config.loss.ramp_fraction,
      kind=config.loss.ramp)
  return {'unsup': ramp(config.loss.unsup_weight), 'weak': ramp(config.loss.weak_weight),
          'pairwise': config.loss.pairwise_weight}


def sown_losses(updates: list[dict]) -> dict[str, jax.Array]:
  """Terms a model adds to its own objective with `self.sow('losses', name, value)` (the
  multi-domain discriminator's), each averaged over the passes (`apply` updates) that
  sowed it."""
  sown = {}
  for collections in updates:
    for name, values in collections.get('losses', {}).items():
      sown.setdefault(name, []).extend(values)
  return {name: sum(values) / len(values) for name, values in sown.items()}


def make_train_step(config, model, num_steps: int):
  """The jitted-to-be step: (state, labelled, unlabelled) -> (state, metrics)."""
  unsup_term = unsupervised_term(config, model)
  base_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  head_lr = schedules.poly_schedule(config.optim.lr, num_steps, config.optim.poly_power)

  def step_fn(state: TrainState, labelled: dict, unlabelled: dict | None):
    step = state.step
    teacher = teacher_of(state)
    key = jax.random.fold_in(base_key, step)

    def loss_fn(params):
      (main_l, _), updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, labelled['image'], train=True,
          mutable=['batch_stats', 'losses'])
      loss_s = supervised_loss(config, main_l, labelled['mask'], step, num_steps)
      metrics = {'loss_sup': loss_s}
      total = loss_s
      batch_stats = updates['batch_stats']
      passes = [updates]
      if unsup_term is not None:
        terms, updates = unsup_term(params, batch_stats, teacher, unlabelled, key)
        batch_stats = updates['batch_stats']
        passes.append(updates)
        weights = term_weights(config, step, num_steps)
        total = total + sum(weights[name] * value for name, value in terms.items())
        metrics.update({f'loss_{name}': value for name, value in terms.items()})
        metrics.update({f'{name}_weight': weights[name] for name in terms})
      for name, value in sown_losses(passes).items():
        total = total + value
        metrics[f'loss_{name}'] = value
      metrics['loss'] = total
      return total, (batch_stats, metrics)

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if teacher is not None:  # the teacher follows the updated student
      student = {'params': state.params, 'batch_stats': state.batch_stats}
      state = state.replace(teacher=baselines.ema_update(
          teacher, student, config.baselines.mean_teacher.decay))
    lr = head_lr(step)
    metrics.update(lr=lr, lr_trunk=lr * config.optim.trunk_lr_multiplier)
    return state, metrics

  return step_fn


def inference_variables(state: TrainState):
  """The network that is evaluated: Mean Teacher's teacher (its EMA weights, which the
  method is named after; the paper does not say which it scored), else the model."""
  teacher = teacher_of(state)
  if teacher is not None:
    return teacher
  return {'params': state.params, 'batch_stats': state.batch_stats}


def make_predict_fn(config, model):
  """jitted (state, images) -> class probabilities with the configured inference."""

  def predict(state, images):
    variables = inference_variables(state)
    logits_fn = lambda x: model.apply(variables, x, train=False)[0]
    return evaluate.predict_probs(logits_fn, images, config.eval)

  return jax.jit(predict)


def evaluate_split(config, state, predict_fn, dataset, mesh, num_samples: int = 0):
  """Scores over one whole split: a confusion matrix summed on the devices (over every
  process's share of the split), divided once.

  Returns (scores, samples): samples holds the normalised image, mask and prediction of
  this process's first `num_samples` examples, for pictures.
  """
  num_classes = config.model.num_classes
  rep = parallel.replicated(mesh)
  # The global confusion matrix, summed over every process's batches on the devices.
  confusion = jax.jit(lambda: jnp.zeros((num_classes, num_classes), jnp.int32),
                      out_shardings=rep)()
  count = jax.jit(lambda total, predictions, mask, valid: total + evaluate.confusion_matrix(
      predictions, mask, num_classes, valid=valid), out_shardings=rep)
  samples = {'image': [], 'mask': [], 'prediction': []}
  for batch in dataset:
    # Blank rows (valid=False) fill the host batch up to a multiple of the local devices;
    # image, mask and valid then become global arrays split over every process's devices.
    host = parallel.pad_host_batch({k: batch[k] for k in ('image', 'mask', 'valid')},
                                   jax.local_device_count())
    inputs = parallel.global_batch(mesh, host)
    predictions = jnp.argmax(predict_fn(state, inputs['image']), axis=-1)
    confusion = count(confusion, predictions, inputs['mask'], inputs['valid'])
    if len(samples['image']) < num_samples:  # this process's examples
      valid = np.asarray(host['valid'], bool)
      for name, value in (('image', host['image']), ('mask', host['mask']),
                          ('prediction', parallel.process_local(predictions))):
        samples[name].extend(np.asarray(value)[valid])
  scores = evaluate.scores(jax.device_get(confusion), data_factory.class_names(config.data))
  return scores, {k: np.stack(v[:num_samples]) for k, v in samples.items() if v}


def save_prediction_panel(config, writer, split: str, step: int, samples) -> str:
  """image | ground truth | prediction rows, to `workdir/predictions_<split>.png` and
  TensorBoard."""
  picture = visualize.panel(
      visualize.denormalise(samples['image'], config.data.mean, config.data.std),
      samples['mask'], samples['prediction'], voc.palette())
  writer.write_images(step, f'{split}/predictions', picture[None])
  return writer.write_png(f'predictions_{split}.png', picture)


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


def open_checkpoints(train_cfg, workdir: str, state, sharding):
  """A run's checkpoints: `checkpoints/` (the latest `train.max_checkpoints`, to resume
  from) and `best/` (the best on val). Returns (state, latest, best, abstract_state,
  last_good): the latest checkpoint's state when there is one (its step: last_good), else
  `state` and None."""
  latest = checkpointing.manager(os.path.join(workdir, 'checkpoints'),
                                 train_cfg.max_checkpoints)
  best = checkpointing.manager(os.path.join(workdir, 'best'), max_to_keep=1)
  abstract_state = checkpointing.abstract_with_sharding(state, sharding)
  last_good = checkpointing.latest_step(latest)
  if last_good is not None:
    state = checkpointing.restore(latest, abstract_state)
    logging.info('resumed from step %d in %s', last_good, latest.directory)
  return state, latest, best, abstract_state, last_good


def training_loop(train_cfg, writer, state, num_steps: int, train_one, select, latest, best,
                  last_good: int | None, images_per_step: float):
  """The loop both trainers run (this one and multidomain.py's), from `state.step`.

  `train_one(state, step) -> (state, metrics)` draws the batches and takes the step;
  `select(state, step) -> mIoU` evaluates for model selection every `train_cfg.eval_every`
  steps, the best checkpoint kept in `best`; metrics are fetched from the devices every
  `log_every` steps (a non-finite one stops the run), the state saved in `latest` every
  `checkpoint_every`. SIGTERM / SIGINT save and leave early. Returns (state, stopped).
  """
  best_step = best.latest_step()
  best_miou = -1.0 if best_step is None else checkpointing.saved_metrics(best, best_step)['miou']
  history: list[tuple[int, Any]] = []  # device metrics, fetched at the next flush

  def flush_metrics():
    fetched = [(s, jax.device_get(m)) for s, m in history]
    history.clear()
    check_finite(fetched, last_good, latest.directory)
    writer.write_scalars(fetched)

  writer.start(int(state.step), num_steps, images_per_step)
  with StopRequest() as stop:
    for step in range(int(state.step), num_steps):
      state, metrics = train_one(state, step)
      history.append((step + 1, metrics))
      done, last = step + 1, step + 1 == num_steps
      stopping = stop.agreed(sync=done % train_cfg.log_every == 0)

      if done % train_cfg.log_every == 0 or last:
        flush_metrics()
      if done % train_cfg.eval_every == 0 or last:
        flush_metrics()
        miou = select(state, done)
        if miou > best_miou:
          best_miou = miou
          checkpointing.save(best, done, state, metrics={'miou': best_miou})
      if done % train_cfg.checkpoint_every == 0 or last or stopping:
        flush_metrics()
        checkpointing.save(latest, done, state)
        last_good = done
      if stopping:
        logging.warning('%s received: saved step %d in %s; run again to resume.',
                        stop.requested or 'a stop request (by another process)', done,
                        latest.directory)
        return state, True
  return state, False


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains, evaluates on val every `train.eval_every` steps (the best checkpoint by val
  mIoU kept apart from the latest), then scores the best checkpoint on the dataset's
  reported split. Resumes from `workdir` when it holds a checkpoint. Returns the final
  results (or {'stopped_at': step} after SIGTERM / SIGINT)."""
  check_config(config)
  # Logging.
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # a folder or gs://bucket/...
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  writer.write_config(config)

  # Mesh and input.
  mesh = parallel.data_mesh()
  num_unlabelled = len(data_factory.make_source(config.data, 'train_unlabelled'))
  eval_splits = data_factory.eval_splits(config.data)
  eval_sets = {split: data_factory.make_eval_dataset(
      config.data, split, process_index=jax.process_index(),
      process_count=jax.process_count()) for split in eval_splits}
  num_steps = total_steps(config, num_unlabelled)

  # Model, state and step.
  model = models.model_from_config(config.model, aux_counts(config))
  state = create_train_state(config, model, num_steps, mesh)
  rep, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  with_unlabelled = uses_unlabelled(config)
  train_step = jax.jit(make_train_step(config, model, num_steps),
                       in_shardings=(rep, batch, batch if with_unlabelled else None),
                       out_shardings=(rep, rep), donate_argnums=0)
  predict_fn = make_predict_fn(config, model)

  # Checkpoints: resume from the latest; the best by val mIoU lives apart.
  state, latest, best, abstract_state, last_good = open_checkpoints(config.train, workdir,
                                                                    state, rep)
  if last_good is None and config.model.encoder_from:
    state = with_encoder_from(state, config.model.encoder_from, mesh)
  # The data streams are random-access: the step alone says where they stand, so resuming
  # needs no iterator state and works with any number of workers, processes or devices.
  streams = data_factory.make_train_streams(
      config.data, device_count=jax.device_count(), process_index=jax.process_index(),
      process_count=jax.process_count(), start_step=int(state.step))

  def train_one(state, step):
    labelled = next(streams.labelled)
    labelled = parallel.global_batch(mesh, {'image': labelled['image'],
                                            'mask': labelled['mask']})
    unlabelled = None
    if with_unlabelled:
      # With pseudo-labels (data.pseudo_labels) the unlabelled batch has masks too.
      unlabelled = parallel.global_batch(mesh, {
          k: v for k, v in next(streams.unlabelled).items() if k in ('image', 'mask')})
    return train_step(state, labelled, unlabelled)

  def select(state, step):
    results, samples = evaluate_split(config, state, predict_fn, eval_sets[eval_splits[0]],
                                      mesh, num_samples=config.train.num_pictures)
    writer.write_eval(step, eval_splits[0], results)
    save_prediction_panel(config, writer, eval_splits[0], step, samples)
    return results['miou']

  state, stopped = training_loop(
      config.train, writer, state, num_steps, train_one, select, latest, best, last_good,
      images_per_step=config.data.batch_size_labelled +
      with_unlabelled * config.data.batch_size_unlabelled)
  streams.close()
  if stopped:
    writer.close()
    return {'stopped_at': int(state.step)}

  # The best checkpoint (model selection on val) scored on the reported split.
  report_split = eval_splits[-1]
  if best.latest_step() is not None:
    state = checkpointing.restore(best, abstract_state)
  results, samples = evaluate_split(config, state, predict_fn, eval_sets[report_split], mesh,
                                    num_samples=config.train.num_pictures)
  results.update(split=report_split, step=int(state.step))
  path = writer.write_json(f'results_{report_split}.json', results)
  picture = save_prediction_panel(config, writer, report_split, int(state.step), samples)
  logging.info('%s scores of the best checkpoint (step %d), written to %s (pictures: %s):\n%s',
               report_split, int(state.step), path, picture, evaluate.format_table(results))
  writer.close()
  return results


def restore_for_inference(config, workdir: str):
  """(model, state) of the best checkpoint in `workdir` (else the latest), for eval and
  prediction; no optimiser step is taken, so the data streams are not needed."""
  model = models.model_from_config(config.model, aux_counts(config))
  state = create_train_state(config, model, max(config.train.num_steps, 1),
                             parallel.data_mesh())
  return model, restore_best_or_latest(state, workdir)


def restore_best_or_latest(state, workdir: str):
  """The train state shaped like `state` in the best checkpoint in `workdir`, else the
  latest."""
  abstract_state = checkpointing.abstract_with_sharding(
      state, parallel.replicated(parallel.data_mesh()))
  for name in ('best', 'checkpoints'):
    directory = os.path.join(workdir, name)
    if epath.Path(directory).is_dir():
      mngr = checkpointing.manager(directory)
      if mngr.latest_step() is not None:
        return checkpointing.restore(mngr, abstract_state)
  raise FileNotFoundError(f'no checkpoint in {workdir}/best or {workdir}/checkpoints; '
                          'train first (--mode=train)')


def evaluate_checkpoint(config, workdir: str) -> dict:
  """`--mode=eval`: every evaluation split scored with the configured inference
  (`config.eval`: scales, flip, sliding window); a table per split and eval_<split>.json."""
  model, state = restore_for_inference(config, workdir)
  mesh = parallel.data_mesh()
  predict_fn = make_predict_fn(config, model)
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  all_results = {}
  for split in data_factory.eval_splits(config.data):
    dataset = data_factory.make_eval_dataset(config.data, split,
                                             process_index=jax.process_index(),
                                             process_count=jax.process_count())
    results, _ = evaluate_split(config, state, predict_fn, dataset, mesh)
    results.update(split=split, step=int(state.step), scales=list(config.eval.scales),
                   flip=config.eval.flip)
    path = writer.write_json(f'eval_{split}.json', results)
    if writer.enabled:  # process 0
      print(f'{split} (step {int(state.step)}), written to {path}:\n'
            f'{evaluate.format_table(results)}')
    all_results[split] = results
  writer.close()
  return all_results
