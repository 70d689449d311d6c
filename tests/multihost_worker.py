"""`python -m cct_jax.main FLAGS` (train), then the test split scored by the trainer's
`evaluate_split` with a fixed stand-in predictor, for tests/test_multihost.py.

The stand-in's predictions are a function of each pixel alone, so they do not depend on
the parameters or on how the batch is split; its scores, written to
`WORKDIR/fixed_scores_<process>.json`, must be the same for any number of processes.
"""

import json
import os

import jax
import jax.numpy as jnp
from absl import app, flags

from cct_jax import main, parallel, train
from cct_jax.data import factory


def stand_in_predictor(num_classes: int):
  """(state, images) -> one-hot 'probabilities' of a class read off each pixel's red."""
  return jax.jit(lambda state, images: jax.nn.one_hot(
      jnp.floor(jnp.abs(images[..., 0]) * 3).astype(jnp.int32) % num_classes, num_classes))


def fixed_scores(config, workdir: str) -> dict:
  stand_in = stand_in_predictor(config.model.num_classes)
  dataset = factory.make_eval_dataset(config.data, 'test', process_index=jax.process_index(),
                                      process_count=jax.process_count())
  scores, samples = train.evaluate_split(config, None, stand_in, dataset, parallel.data_mesh(),
                                         num_samples=100)
  scores['num_samples'] = len(samples['image'])
  with open(os.path.join(workdir, f'fixed_scores_{jax.process_index()}.json'), 'w') as f:
    json.dump(scores, f)
  return scores


def run(argv):
  main.main(argv)
  fixed_scores(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == '__main__':
  app.run(run)
