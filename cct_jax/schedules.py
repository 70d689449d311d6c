"""Ramp-ups, the ab-CE threshold, the poly learning rate and the optimiser (paper sec. 3.2,
App. B and J).

Schedules are functions of the integer step and work on traced values inside `jit`.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cct_jax import errors
from cct_jax.models import resnet


def _gaussian(x):
  return jnp.exp(-5.0 * jnp.square(1.0 - x))


def _exp(x):  # App. K, Eq. (16)
  return jnp.exp(5.0 * (x - 1.0))


def _log(x):  # App. K: the log shape of Eq. (17)
  return 1.0 - jnp.exp(-5.0 * x)


def _linear(x):
  return x


def _cosine(x):
  return 0.5 * (1.0 - jnp.cos(jnp.pi * x))


# Ramp shapes of App. K (Fig. 8), as the authors' utils/ramps.py (github.com/yassouali/CCT);
# x = min(t, T) / T in [0, 1].
# 'gaussian' is the paper's sec. 3.2.2 curve (their 'sigmoid_rampup') and the default.
RAMPS = {'gaussian': _gaussian, 'exp': _exp, 'log': _log, 'linear': _linear,
         'cosine': _cosine}


def ramp_up(step, ramp_steps: float, kind: str = 'gaussian') -> jax.Array:
  """The ramp factor in [0, 1] at `step`; 1 from `ramp_steps` on (and always if it is 0)."""
  if kind not in RAMPS:
    raise ValueError(f'ramp {kind!r} not in {sorted(RAMPS)}')
  if ramp_steps <= 0:
    return jnp.ones_like(jnp.asarray(step, jnp.float32))
  x = jnp.clip(jnp.asarray(step, jnp.float32) / ramp_steps, 0.0, 1.0)
  return RAMPS[kind](x)


def ramp_weight(step, *, final_weight: float, total_steps: int, ramp_fraction: float,
                kind: str = 'gaussian') -> jax.Array:
  """w(t) = final_weight * ramp(t) over T = ramp_fraction * total_steps (Eqs. 3, 5).

  With the defaults, w_u(t) = 30 exp(-5 (1 - min(t, T)/T)^2) and w_w = 0.4 x the ramp.
  """
  return final_weight * ramp_up(step, ramp_fraction * total_steps, kind)


def ab_ce_threshold(step, *, total_steps: int, num_classes: int, cap: float = 0.9,
                    ramp_fraction: float = 0.4) -> jax.Array:
  """Eq. (17): eta(t) = min(cap, 1/C + (cap - 1/C)(1 - exp(-5 t / T))), T = 0.4 N.

  Unlike the loss-weight ramps, t is not clipped at T (as Eq. 17): eta keeps closing in on
  the cap after T.
  """
  ramp_steps = ramp_fraction * total_steps
  start = 1.0 / num_classes
  t = jnp.asarray(step, jnp.float32)
  rise = 1.0 - jnp.exp(-5.0 * t / ramp_steps) if ramp_steps > 0 else 1.0
  return jnp.minimum(cap, start + (cap - start) * rise)


def poly_schedule(base_lr: float, total_steps: int, power: float = 0.9) -> optax.Schedule:
  """lr(t) = base_lr * (1 - t/N)^power, stepped per iteration (the authors' Poly)."""
  return optax.polynomial_schedule(init_value=base_lr, end_value=0.0, power=power,
                                   transition_steps=total_steps)


def default_optim_config() -> ml_collections.ConfigDict:
  """SGD of App. J, Table 12, with the 0.1x trunk learning rate of the authors' code
  (github.com/yassouali/CCT)."""
  return ml_collections.ConfigDict(dict(
      name='sgd', lr=1e-2, momentum=0.9, weight_decay=1e-4, trunk_lr_multiplier=0.1,
      poly_power=0.9,
      # > 0: the trunk's stem and stages 1..frozen_stages are never updated, weight decay
      # included (IRN's CAM network freezes 2).
      frozen_stages=0))


def param_group(path: tuple[Any, ...], frozen_stages: int = 0) -> str:
  """'trunk' for the ResNet trunk (params['encoder']['trunk']), 'frozen' for its stem and
  stages up to `frozen_stages` when that is > 0, 'head' for the rest."""
  keys = tuple(getattr(entry, 'key', entry) for entry in path[:3])
  if keys[:2] != ('encoder', 'trunk'):
    return 'head'
  frozen = frozen_stages > 0 and resnet.stage_of(keys[2]) <= frozen_stages
  return 'frozen' if frozen else 'trunk'


def param_groups(params: Any, frozen_stages: int = 0) -> Any:
  """A tree like `params` holding each leaf's group name."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: param_group(path, frozen_stages), params)


OPTIMIZERS = ('sgd', 'adamw')


def make_optimizer(optim_cfg: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """The paper's SGD (default) or AdamW, with poly decay and the trunk at a lower lr.

  SGD: weight decay is added to the gradient before momentum (`add_decayed_weights` then
  `sgd`), which is PyTorch's SGD(weight_decay=...). AdamW (`optim.name='adamw'`, for small
  networks trained from scratch) decouples it. The groups come from the parameter paths
  (`param_groups`), so any tree with params['encoder']['trunk'] works, abstract ones
  included. Frozen parameters get zero updates; under jit their gradients, never read,
  are not computed.
  """
  if optim_cfg.name not in OPTIMIZERS:
    raise errors.UserError(f'optim.name must be one of {OPTIMIZERS}, got {optim_cfg.name!r}')

  def optimizer(lr_multiplier):
    learning_rate = poly_schedule(optim_cfg.lr * lr_multiplier, total_steps,
                                  optim_cfg.poly_power)
    if optim_cfg.name == 'adamw':
      return optax.adamw(learning_rate, weight_decay=optim_cfg.weight_decay)
    momentum = optim_cfg.momentum if optim_cfg.momentum > 0 else None
    return optax.chain(optax.add_decayed_weights(optim_cfg.weight_decay),
                       optax.sgd(learning_rate, momentum=momentum))

  groups = {'trunk': optimizer(optim_cfg.trunk_lr_multiplier), 'head': optimizer(1.0)}
  if optim_cfg.frozen_stages > 0:
    groups['frozen'] = optax.set_to_zero()
  return optax.partition(
      groups, functools.partial(param_groups, frozen_stages=optim_cfg.frozen_stages))
