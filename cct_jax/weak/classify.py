"""`--mode=pretrain_cls`: the encoder and g_c trained on image-level labels (sec. 3.3).

Multi-label binary CE over the foreground classes, on the labelled set (labels from its
masks) and the weak set (`data.image_labels`, or its masks), `weak.classifier_steps`
steps of `weak.classifier_optim`. Everything goes to `<workdir>/classifier`: checkpoints
(resumed from automatically), metrics.jsonl, and results_val.json, the image-label
accuracy on the val split. The segmentation run starts from this encoder with
`model.encoder_from=<workdir>/classifier`; --mode=pseudo_labels reads its CAMs.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from cct_jax import checkpointing, models, parallel, schedules, train
from cct_jax.data import factory as data_factory
from cct_jax.data import pipeline, weak
from cct_jax.weak import cams
from cct_jax.writers import MetricWriter

CLASSIFIER_DIR = 'classifier'


def foreground(config) -> np.ndarray:
  return cams.foreground_classes(config.model.num_classes,
                                 config.perturbations.background_class)


def classifier(config):
  return models.classifier_from_config(config.model, len(foreground(config)))


def classification_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Multi-label binary CE, mean over images and foreground classes."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))


def _classification_example(example: dict, rng: np.random.Generator, *, transform,
                            classes: np.ndarray) -> dict:
  """The training transform's image and the image-level flags of the classes g_c sees."""
  return {'image': transform(example, rng)['image'],
          'targets': example['image_labels'][classes].astype(np.float32)}


def make_classifier_step(model):
  """(state, batch with 'image' and 'targets') -> (state, metrics)."""

  def step_fn(state: train.TrainState, batch: dict):
    def loss_fn(params):
      (logits, _), updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
          mutable=['batch_stats'])
      loss = classification_loss(logits, batch['targets'])
      accuracy = jnp.mean((logits > 0) == (batch['targets'] > 0.5))
      return loss, (updates['batch_stats'], {'loss': loss, 'label_accuracy': accuracy})

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics

  return step_fn


def create_classifier_state(config, model, mesh) -> train.TrainState:
  def init(key):
    variables = model.init(key, jnp.zeros((1, 64, 64, 3)))
    return train.TrainState.create(
        apply_fn=model.apply, params=variables['params'],
        batch_stats=variables['batch_stats'],
        tx=schedules.make_optimizer(config.weak.classifier_optim,
                                    config.weak.classifier_steps))

  key = jax.random.fold_in(jax.random.key(config.seed), 2)
  return jax.jit(init, out_shardings=parallel.replicated(mesh))(key)


def image_label_accuracy(config, model, state, mesh) -> dict:
  """Per-label and whole-image accuracy of g_c (logit > 0) on the first evaluation split,
  whose image-level labels come from its masks."""
  classes = foreground(config)
  split = data_factory.eval_splits(config.data)[0]
  predict = jax.jit(lambda state, images: model.apply(
      {'params': state.params, 'batch_stats': state.batch_stats}, images)[0] > 0)
  correct, images = [], 0
  for batch in data_factory.make_eval_dataset(config.data, split):
    host = parallel.pad_host_batch({k: batch[k] for k in ('image', 'valid')},
                                   jax.local_device_count())
    predicted = np.asarray(predict(state, parallel.global_batch(mesh, host)['image']))
    for i in np.flatnonzero(batch['valid']):
      truth = weak.present_classes(batch['mask'][i], config.model.num_classes)[classes]
      correct.append(predicted[i] == truth)
      images += 1
  correct = np.asarray(correct)
  return {'split': split, 'images': images, 'label_accuracy': float(correct.mean()),
          'image_accuracy': float(correct.all(axis=1).mean())}


def train_classifier(config, workdir: str) -> dict:
  """Pre-trains encoder + g_c into `<workdir>/classifier`; returns the val accuracies."""
  directory = os.path.join(workdir, CLASSIFIER_DIR)
  os.makedirs(directory, exist_ok=True)
  writer = MetricWriter(directory, enabled=jax.process_index() == 0)
  writer.write_config(config)
  mesh = parallel.data_mesh()
  model = classifier(config)
  state = create_classifier_state(config, model, mesh)
  mngr = checkpointing.manager(os.path.join(directory, 'checkpoints'))
  if checkpointing.latest_step(mngr) is not None:
    state = checkpointing.restore(mngr, checkpointing.abstract_with_sharding(
        state, parallel.replicated(mesh)))
    logging.info('resumed from step %d in %s', int(state.step), mngr.directory)

  weak_cfg, num_steps = config.weak, config.weak.classifier_steps
  transform = functools.partial(_classification_example,
                                transform=data_factory.train_transform(config.data),
                                classes=foreground(config))
  batch_size = pipeline.per_process_batch_size(
      weak_cfg.classifier_batch_size, device_count=jax.device_count(),
      process_count=jax.process_count(), name='weak.classifier_batch_size')
  stream = iter(pipeline.prefetched(pipeline.train_dataset(
      data_factory.make_classification_source(config.data), transform,
      batch_size=batch_size, seed=pipeline.stream_seed(config.data.shuffle_seed, 2),
      process_index=jax.process_index(), process_count=jax.process_count(),
      start_step=int(state.step)), num_workers=config.data.num_workers,
      read_threads=config.data.read_threads, prefetch=config.data.prefetch))
  rep, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  step_fn = jax.jit(make_classifier_step(model), in_shardings=(rep, sharded),
                    out_shardings=(rep, rep), donate_argnums=0)

  history = []
  writer.start(int(state.step), num_steps, weak_cfg.classifier_batch_size)
  for step in range(int(state.step), num_steps):
    state, metrics = step_fn(state, parallel.global_batch(mesh, next(stream)))
    history.append((step + 1, metrics))
    done = step + 1
    if done % weak_cfg.classifier_log_every == 0 or done == num_steps:
      fetched = [(s, jax.device_get(m)) for s, m in history]
      history.clear()
      train.check_finite(fetched, checkpointing.latest_step(mngr), mngr.directory)
      writer.write_scalars(fetched)
    if done % weak_cfg.classifier_checkpoint_every == 0 or done == num_steps:
      checkpointing.save(mngr, done, state)

  results = image_label_accuracy(config, model, state, mesh)
  results['step'] = int(state.step)
  path = writer.write_json(f'results_{results["split"]}.json', results)
  logging.info('classifier at step %d: %s label accuracy %.1f%%, whole-image %.1f%% (%s)',
               int(state.step), results['split'], 100 * results['label_accuracy'],
               100 * results['image_accuracy'], path)
  writer.close()
  return results
