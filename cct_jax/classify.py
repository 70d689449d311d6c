"""`--mode=pretrain_cls`: g_c and its network trained on image-level labels (sec. 3.3).

Multi-label binary CE over the foreground classes (torch's multilabel_soft_margin_loss,
IRN's), on the labelled set (labels from its masks) and the weak set
(`data.image_labels`, or its masks), `weak.classifier_steps` steps of
`weak.classifier_optim`, on the network `weak.classifier` names. Everything goes to
`<workdir>/classifier`: checkpoints (resumed from automatically), metrics.jsonl, and
results_val.json, the image-label accuracy on the val split. --mode=pseudo_labels reads
its CAMs; with `weak.classifier='encoder'` the segmentation run can start from this
encoder (`model.encoder_from=<workdir>/classifier`).
"""

import contextlib
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from cct_jax import (loop, parallel, progress, schedules, segmentation, state as state_lib,
                     weak)
from cct_jax.data import factory as data_factory
from cct_jax.data import pipeline
from cct_jax.data import weak as weak_data


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

  def step_fn(state: state_lib.TrainState, batch: dict):
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


def image_label_accuracy(config, model, state, mesh) -> dict:
  """Per-label and whole-image accuracy of g_c (logit > 0) on the first evaluation split,
  whose image-level labels come from its masks."""
  classes = weak.foreground_of(config)
  split = data_factory.eval_splits(config.data)[0]
  predict = jax.jit(lambda state, images: model.apply(state_lib.variables(state), images)[0] > 0)
  correct, images = [], 0
  for batch in pipeline.make_eval_dataset(config.data, split):
    host = parallel.pad_host_batch({k: batch[k] for k in ('image', 'valid')},
                                   jax.local_device_count())
    predicted = np.asarray(predict(state, parallel.global_batch(mesh, host)['image']))
    for i in np.flatnonzero(batch['valid']):
      truth = weak_data.present_classes(batch['mask'][i], config.model.num_classes)[classes]
      correct.append(predicted[i] == truth)
      images += 1
  correct = np.asarray(correct)
  return {'split': split, 'images': images, 'label_accuracy': float(correct.mean()),
          'image_accuracy': float(correct.all(axis=1).mean())}


def classifier_stream(config, first_step: int):
  """Batches of training images (the segmentation's augmentation, crops of
  `weak.classifier_crop_size`) and their foreground flags, positioned after `first_step`
  steps (random-access, as the segmentation streams)."""
  data_cfg = config.data.copy_and_resolve_references()
  data_cfg.crop_size = config.weak.classifier_crop_size
  transform = functools.partial(_classification_example,
                                transform=data_factory.train_transform(data_cfg),
                                classes=weak.foreground_of(config))
  batch_size = pipeline.per_process_batch_size(
      config.weak.classifier_batch_size, device_count=jax.device_count(),
      process_count=jax.process_count(), name='weak.classifier_batch_size')
  return iter(pipeline.prefetched(pipeline.train_dataset(
      data_factory.make_classification_source(config.data), transform,
      batch_size=batch_size, seed=pipeline.stream_seed(config.data.shuffle_seed, 2),
      process_index=jax.process_index(), process_count=jax.process_count(),
      start_step=first_step), num_workers=config.data.num_workers,
      read_threads=config.data.read_threads, prefetch=config.data.prefetch))


def create_classifier_state(config, model, mesh,
                            starting_weights: bool = True) -> state_lib.TrainState:
  """Encoder + g_c for `weak.classifier_steps` steps of `weak.classifier_optim`; with
  `starting_weights`, from the ImageNet trunk when configured (the paper's classifier
  starts from ImageNet too)."""
  key = state_lib.seed_stream(config.seed, 'classifier_init')
  state = state_lib.create(
      model.apply, lambda k: model.init(k, jnp.zeros((1, 64, 64, 3))),
      schedules.make_optimizer(config.weak.classifier_optim, config.weak.classifier_steps),
      key, mesh)
  if not starting_weights:
    return state
  return state_lib.with_pretrained_trunk(state, config.model, mesh)


def train_classifier(config, workdir: str) -> dict:
  """Pre-trains encoder + g_c into `<workdir>/classifier` for `weak.classifier_steps`
  steps, without model selection; returns the image-label accuracies on val."""
  segmentation.check_config(config)
  workdir = os.path.join(workdir, weak.CLASSIFIER_DIR)
  mesh = parallel.data_mesh()
  model = weak.classifier(config)
  weak_cfg = config.weak
  writer, checkpoints, state = loop.open_run(
      config, workdir,
      lambda starting_weights: create_classifier_state(config, model, mesh, starting_weights),
      mesh=mesh, max_checkpoints=2)

  stream = classifier_stream(config, int(state.step))
  rep, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  step_fn = jax.jit(make_classifier_step(model), in_shardings=(rep, sharded),
                    out_shardings=(rep, rep), donate_argnums=0)

  def train_one(state, step):
    del step
    batch, waited = progress.timed_next(stream)
    writer.add_input_wait(waited)
    return step_fn(state, parallel.global_batch(mesh, batch))

  def report(state) -> dict:
    results = dict(image_label_accuracy(config, model, state, mesh), step=int(state.step))
    path = writer.write_json(f'results_{results["split"]}.json', results)
    logging.info('classifier at step %d: %s label accuracy %.1f%%, whole-image %.1f%% (%s)',
                 int(state.step), results['split'], 100 * results['label_accuracy'],
                 100 * results['image_accuracy'], path)
    return results

  every = loop.Intervals(log=weak_cfg.classifier_log_every,
                         checkpoint=weak_cfg.classifier_checkpoint_every,
                         stop_check=config.train.stop_check_every)
  with contextlib.closing(stream):
    state, stopped = loop.train_loop(
        state, num_steps=weak_cfg.classifier_steps, train_one=train_one, evaluate=None,
        checkpoints=checkpoints, writer=writer, every=every,
        images_per_step=weak_cfg.classifier_batch_size)
  return loop.finish(state, stopped, checkpoints=checkpoints, writer=writer, report=report)
