"""Ramp-ups, ab-CE threshold, poly learning rate and the optimiser (paper sec. 3.2, App. B and J)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cct_jax import schedules

N = 1000  # total steps


def _steps(ramp_steps):
  return (0, ramp_steps / 2, ramp_steps, N - 1)


@pytest.mark.parametrize('kind, formula', [
    ('gaussian', lambda x: math.exp(-5 * (1 - x) ** 2)),
    ('exp', lambda x: math.exp(5 * (x - 1))),
    ('log', lambda x: 1 - math.exp(-5 * x)),
    ('linear', lambda x: x),
    ('cosine', lambda x: 0.5 * (1 - math.cos(math.pi * x))),
])
def test_loss_weight_ramps(kind, formula):
  T = 0.1 * N
  for t in _steps(T):
    expected = 30.0 * formula(min(t, T) / T)
    value = schedules.ramp_weight(t, final_weight=30.0, total_steps=N, ramp_fraction=0.1,
                                  kind=kind)
    np.testing.assert_allclose(value, expected, rtol=1e-5, err_msg=f'{kind} t={t}')


def test_default_ramp_is_the_gaussian_and_unknown_ramps_fail():
  assert float(schedules.ramp_up(0, 100)) == pytest.approx(math.exp(-5), rel=1e-6)
  assert float(schedules.ramp_up(7, 0)) == 1.0
  with pytest.raises(ValueError):
    schedules.ramp_up(0, 100, 'sigmoid')


def test_ab_ce_threshold_follows_equation_17():
  C, T = 21, 0.4 * N
  for t in _steps(T):
    expected = min(0.9, 1 / C + (0.9 - 1 / C) * (1 - math.exp(-5 * t / T)))
    value = schedules.ab_ce_threshold(t, total_steps=N, num_classes=C)
    np.testing.assert_allclose(value, expected, rtol=1e-6, err_msg=f't={t}')
  assert float(schedules.ab_ce_threshold(0, total_steps=N, num_classes=C)) == \
      pytest.approx(1 / C)


def test_poly_learning_rate():
  lr = schedules.poly_schedule(1e-2, N, 0.9)
  for t in (0, N // 2, N - 1):  # float32: (1/N)^0.9 at the last step is good to ~1e-5
    np.testing.assert_allclose(lr(t), 1e-2 * (1 - t / N) ** 0.9, rtol=1e-4)
  assert float(lr(N)) == 0.0


def _toy_params():
  two = lambda n: jnp.full((n,), 2.0)
  return {'encoder': {'trunk': {'w': two(2)}, 'psp': {'w': two(2)}}, 'main': {'w': two(3)}}


def test_trunk_gets_a_tenth_of_the_head_update():
  cfg = schedules.default_optim_config()
  cfg.momentum, cfg.weight_decay = 0.0, 0.0
  params = _toy_params()
  assert schedules.param_groups(params) == {
      'encoder': {'trunk': {'w': 'trunk'}, 'psp': {'w': 'head'}}, 'main': {'w': 'head'}}
  optimizer = schedules.make_optimizer(cfg, total_steps=N)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  np.testing.assert_allclose(updates['main']['w'], -1e-2, rtol=1e-6)
  np.testing.assert_allclose(updates['encoder']['psp']['w'], -1e-2, rtol=1e-6)
  np.testing.assert_allclose(updates['encoder']['trunk']['w'], -1e-3, rtol=1e-6)


def test_weight_decay_enters_the_gradient_before_momentum_as_pytorch():
  cfg = schedules.default_optim_config()
  optimizer = schedules.make_optimizer(cfg, total_steps=N)
  update = jax.jit(optimizer.update)
  params = _toy_params()
  state = optimizer.init(params)
  g = 0.5
  buffer, p = 0.0, 2.0  # PyTorch SGD for one head parameter
  for t in range(3):
    grads = jax.tree.map(lambda x: jnp.full_like(x, g), params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    buffer = 0.9 * buffer + (g + 1e-4 * p)
    p = p - 1e-2 * (1 - t / N) ** 0.9 * buffer
    np.testing.assert_allclose(params['main']['w'], p, rtol=1e-6)
