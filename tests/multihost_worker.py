"""`python -m cct_jax.main FLAGS` (train), then the reported split scored by
`evaluate_split` with a fixed stand-in predictor, then `--mode=predict` of the folder
`--predict_input` into `WORKDIR/predictions`, for tests/test_multihost.py.

The stand-in's predictions are a function of each pixel alone, so they do not depend on
the parameters or on how the batch is split; its scores, written to
`WORKDIR/fixed_scores_<process>.json`, must be the same for any number of processes.
"""

import json
import os

import jax
import jax.numpy as jnp
from absl import app, flags

from cct_jax import evaluate, main, parallel, predict
from cct_jax.data import factory, pipeline


flags.DEFINE_string('predict_input', None, 'A folder of images to predict after training.')


def stand_in_predictor(num_classes: int):
  """(state, images, sizes) -> one-hot 'probabilities' of a class read off each pixel's
  red."""
  return lambda state, images, sizes=None: jax.nn.one_hot(
      jnp.floor(jnp.abs(images[..., 0]) * 3).astype(jnp.int32) % num_classes, num_classes)


def fixed_scores(config, workdir: str) -> dict:
  stand_in = stand_in_predictor(config.model.num_classes)
  split = factory.eval_splits(config.data)[-1]
  dataset = pipeline.make_eval_dataset(config.data, split, device_count=jax.device_count(),
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count())
  mesh = parallel.data_mesh()
  eval_step = evaluate.make_eval_step(stand_in, config.model.num_classes, mesh)
  scores, samples = evaluate.evaluate_split(
      eval_step, None, dataset, mesh, config.model.num_classes,
      factory.class_names(config.data), num_samples=100)
  scores['num_samples'] = len(samples['image'])
  with open(os.path.join(workdir, f'fixed_scores_{jax.process_index()}.json'), 'w') as f:
    json.dump(scores, f)
  return scores


def run(argv):
  main.main(argv)
  fixed_scores(flags.FLAGS.config, flags.FLAGS.workdir)
  if flags.FLAGS.predict_input:
    predict.predict_folder(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.predict_input,
                           os.path.join(flags.FLAGS.workdir, 'predictions'))


if __name__ == '__main__':
  app.run(run)
