"""Mean Teacher (Tarvainen & Valpola 2017), an input-consistency baseline of paper App. A
(Table 4): the student's softmax on a noisy x_u against the teacher's on the clean x_u,
the teacher being the EMA of the student (`baselines.mean_teacher` holds decay and noise).
Trains the encoder and main decoder only (the paper gives no settings; these are Tarvainen
& Valpola's)."""

import jax
import jax.numpy as jnp
import ml_collections

from cct_jax import errors, losses
from cct_jax.methods.main_decoder import train_logits
from cct_jax.methods.method import Method


def default_config() -> ml_collections.ConfigDict:
  # decay: teacher <- decay * teacher + (1 - decay) * student after every step.
  # noise_std: the student sees x_u + N(0, noise_std^2) per pixel and channel of the
  # normalised image, the teacher the clean x_u.
  return ml_collections.ConfigDict(dict(decay=0.99, noise_std=0.15))


def check_config(config) -> None:
  decay = config.baselines.mean_teacher.decay
  if not 0.0 <= decay <= 1.0:
    raise errors.UserError(f'baselines.mean_teacher.decay must be in [0, 1], got {decay}')


def init_extra(variables: dict) -> dict:
  """The teacher starts as a copy of the student, in buffers of its own (the train state
  is donated)."""
  return {'teacher': jax.tree.map(jnp.copy, variables)}


def ema_update(teacher, student, decay: float):
  """teacher <- decay * teacher + (1 - decay) * student, leaf by leaf (BN statistics too)."""
  return jax.tree.map(lambda t, s: decay * t + (1.0 - decay) * s, teacher, student)


def update_extra(config, extra: dict, variables: dict) -> dict:
  """The teacher follows the updated student."""
  return {'teacher': ema_update(extra['teacher'], variables,
                                config.baselines.mean_teacher.decay)}


def evaluated(extra: dict, variables: dict) -> dict:
  """The teacher, whose EMA weights the method is named after (the paper does not say
  which network it scored)."""
  del variables
  return extra['teacher']


def make_term(config, model):
  """MSE between the student's softmax on a noisy x_u and the teacher's on the clean x_u.

  The teacher runs with batch-statistics BN like the student (as the Mean Teacher code);
  the statistics of its pass are dropped, its own are the EMA of the student's. It is a
  target only: no gradient reaches it.
  """
  noise_std = config.baselines.mean_teacher.noise_std

  def term(params, batch_stats, extra, batch, key):
    images = batch['image']
    noisy = images + noise_std * jax.random.normal(key, images.shape, images.dtype)
    student, batch_stats = train_logits(
        model, {'params': params, 'batch_stats': batch_stats}, noisy)
    target, _ = train_logits(model, extra['teacher'], images)
    return ({'unsup': losses.consistency_loss(student[None], target, 'mse')},
            {'batch_stats': batch_stats})

  return term


METHOD = Method(make_term=make_term, init_extra=init_extra, update_extra=update_extra,
                evaluated=evaluated, check_config=check_config, default_config=default_config)
