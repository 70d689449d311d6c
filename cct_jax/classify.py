"""`--mode=pretrain_cls`: the encoder and g_c trained on image-level labels (sec. 3.3).

Multi-label binary CE over the foreground classes, on the labelled set (labels from its
masks) and the weak set (`data.image_labels`, or its masks), `weak.classifier_steps`
steps of `weak.classifier_optim`. Everything goes to `<workdir>/classifier`: checkpoints
(resumed from automatically), metrics.jsonl, and results_val.json, the image-label
accuracy on the val split. The segmentation run starts from this encoder with
`model.encoder_from=<workdir>/classifier`; --mode=pseudo_labels reads its CAMs.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from cct_jax import parallel, progress, schedules, state as state_lib, train, weak
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


class ClassifierTrainer(train.Trainer):
  """Encoder + g_c on image-level labels, `weak.classifier_steps` steps, no model
  selection; the report is the image-label accuracy on val."""

  subdir = weak.CLASSIFIER_DIR

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    self.model = weak.classifier(config)

  def check_config(self, config) -> None:
    train.check_config(config)

  def loop_config(self) -> ml_collections.ConfigDict:
    weak_cfg = self.config.weak
    return ml_collections.ConfigDict(dict(
        log_every=weak_cfg.classifier_log_every, eval_every=0,
        stop_check_every=self.config.train.stop_check_every,
        checkpoint_every=weak_cfg.classifier_checkpoint_every, max_checkpoints=2))

  def num_steps(self) -> int:
    return self.config.weak.classifier_steps

  def create_state(self, num_steps: int):
    key = state_lib.seed_stream(self.config.seed, 'classifier_init')
    state = state_lib.create(
        self.model.apply, lambda k: self.model.init(k, jnp.zeros((1, 64, 64, 3))),
        schedules.make_optimizer(self.config.weak.classifier_optim, num_steps), key, self.mesh)
    # The paper's classifier starts from ImageNet too.
    return state_lib.with_pretrained_trunk(state, self.config.model, self.mesh)

  def start(self, num_steps: int, first_step: int) -> None:
    config = self.config
    transform = functools.partial(_classification_example,
                                  transform=data_factory.train_transform(config.data),
                                  classes=weak.foreground_of(config))
    batch_size = pipeline.per_process_batch_size(
        config.weak.classifier_batch_size, device_count=jax.device_count(),
        process_count=jax.process_count(), name='weak.classifier_batch_size')
    self.stream = iter(pipeline.prefetched(pipeline.train_dataset(
        data_factory.make_classification_source(config.data), transform,
        batch_size=batch_size, seed=pipeline.stream_seed(config.data.shuffle_seed, 2),
        process_index=jax.process_index(), process_count=jax.process_count(),
        start_step=first_step), num_workers=config.data.num_workers,
        read_threads=config.data.read_threads, prefetch=config.data.prefetch))
    rep, sharded = parallel.replicated(self.mesh), parallel.batch_sharded(self.mesh)
    self.step_fn = jax.jit(make_classifier_step(self.model), in_shardings=(rep, sharded),
                           out_shardings=(rep, rep), donate_argnums=0)

  def train_one(self, state, step):
    del step
    batch, waited = progress.timed_next(self.stream)
    self.writer.add_input_wait(waited)
    return self.step_fn(state, parallel.global_batch(self.mesh, batch))

  def images_per_step(self) -> float:
    return self.config.weak.classifier_batch_size

  def stop(self) -> None:
    self.stream.close()

  def report(self, state) -> dict:
    results = image_label_accuracy(self.config, self.model, state, self.mesh)
    results['step'] = int(state.step)
    path = self.writer.write_json(f'results_{results["split"]}.json', results)
    logging.info('classifier at step %d: %s label accuracy %.1f%%, whole-image %.1f%% (%s)',
                 int(state.step), results['split'], 100 * results['label_accuracy'],
                 100 * results['image_accuracy'], path)
    return results


def train_classifier(config, workdir: str) -> dict:
  """Pre-trains encoder + g_c into `<workdir>/classifier`; returns the val accuracies."""
  return ClassifierTrainer(config, workdir).run()
