"""App. A's baselines (Mean Teacher, input VAT) and the cluster-assumption maps of sec. 3.1."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from cct_jax import checkpointing, cluster_maps, defaults, methods, models, parallel
from cct_jax import perturbations, segmentation, train, train_step
from cct_jax.methods import input_vat, mean_teacher
from cct_jax.models import cct

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 5


def _tiny_config(mode: str):
  config = defaults.base_config()
  config.model = models.tiny_model_config(NUM_CLASSES)
  config.data.num_classes = NUM_CLASSES
  config.train.mode = mode
  config.loss.ramp_fraction = 0.0  # the full unsupervised weight from the first step
  return config


def _images(seed, shape=(2, 32, 32, 3)):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _variables(model, seed: int) -> dict:
  """Initial variables for 32x32 images, jitted: op by op, each operation compiles alone."""
  return jax.jit(lambda k: models.init_variables(model, k, (1, 32, 32, 3)))(
      jax.random.key(seed))


def _leaves(tree):
  return [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(jax.device_get(tree))]


# --------------------------------------------------------------------------------------
# Mean Teacher.


def test_mean_teacher_is_the_ema_of_the_student_after_every_step():
  config = _tiny_config('mean_teacher')
  config.baselines.mean_teacher.decay = 0.8  # large steps, so a wrong formula shows
  num_steps = 3
  model, method = methods.build(config)
  state = train_step.create_train_state(config, model, method, num_steps, parallel.data_mesh())
  expected = _leaves(state.extra['teacher'])
  assert all(np.array_equal(t, s) for t, s in zip(
      expected, _leaves({'params': state.params, 'batch_stats': state.batch_stats})))

  step_fn = jax.jit(train_step.make_train_step(config, model, method, num_steps))
  labels = np.random.default_rng(1).integers(0, NUM_CLASSES, (2, 32, 32)).astype(np.int32)
  for step in range(num_steps):
    state, metrics = step_fn(state, {'image': _images(2 * step), 'mask': labels},
                             {'image': _images(2 * step + 1)})
    assert metrics['loss_unsup'] > 0
    student = _leaves({'params': state.params, 'batch_stats': state.batch_stats})
    expected = [0.8 * t + 0.2 * s for t, s in zip(expected, student)]
  for actual, wanted in zip(_leaves(state.extra['teacher']), expected):
    np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-7)
  # The teacher lags: after three steps it is not the student.
  assert any(not np.allclose(t, s) for t, s in zip(_leaves(state.extra['teacher']), student))


def test_mean_teacher_term_trains_the_student_and_gives_the_teacher_no_gradient():
  config = _tiny_config('mean_teacher')
  model = models.model_from_config(config.model)
  student = _variables(model, 0)
  teacher = _variables(model, 1)
  term = mean_teacher.make_term(config, model)

  def loss(params, teacher):
    terms, _ = term(params, student['batch_stats'], {'teacher': teacher}, {'image': _images(3)},
                    jax.random.key(4))
    return terms['unsup']

  loss_value = jax.jit(loss)(student['params'], teacher)
  grad_student, grad_teacher = jax.jit(jax.grad(loss, argnums=(0, 1)))(student['params'],
                                                                      teacher)
  assert loss_value > 0
  assert max(np.abs(g).max() for g in _leaves(grad_student)) > 0
  assert all(np.all(g == 0) for g in _leaves(grad_teacher))


# --------------------------------------------------------------------------------------
# Input-level VAT.


def test_input_vat_direction_has_norm_eps_and_raises_the_kl_more_than_random_ones():
  model = models.model_from_config(models.tiny_model_config(NUM_CLASSES))
  variables = _variables(model, 0)
  logits_fn = jax.jit(lambda x: model.apply(variables, x, train=False)[0])
  images, eps = _images(5, (3, 32, 32, 3)), 1.0

  def kl(r):  # KL(p(x) || p(x + r)) per image
    log_p = jax.nn.log_softmax(logits_fn(images))
    log_q = jax.nn.log_softmax(logits_fn(images + r))
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=(1, 2, 3))

  @jax.jit
  def run(key):
    r_adv = eps * perturbations.adversarial_direction(logits_fn, images, key, method='hvp',
                                                      xi=1e-6, iterations=2)
    random = jax.random.normal(jax.random.fold_in(key, 1), (4,) + images.shape)
    norms = jnp.sqrt(jnp.sum(jnp.square(random), axis=(2, 3, 4), keepdims=True))
    return r_adv, kl(r_adv), jax.vmap(kl)(eps * random / norms)

  r_adv, kl_adv, kl_random = run(jax.random.key(6))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(r_adv).reshape(3, -1), axis=1), eps,
                             rtol=1e-5)
  assert np.all(kl_adv > 0)
  assert np.all(kl_adv > 3 * np.max(kl_random, axis=0)), (kl_adv, kl_random)


class _SmallSegmenter(nn.Module):
  """CCT's interface ((logits, aux) from images, batch statistics) in two layers: the
  input VAT term compiles in a second instead of a network's minute."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3))(x))
    return nn.Conv(NUM_CLASSES, (1, 1))(nn.relu(x)), {}


def test_input_vat_takes_the_exact_direction_and_sows_its_size():
  config = _tiny_config('input_vat')
  assert config.baselines.input_vat.method == 'hvp'
  model = _SmallSegmenter()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  term = input_vat.make_term(config, model)
  terms, updates = jax.jit(lambda v, images, key: term(
      v['params'], v['batch_stats'], {}, {'image': images}, key))(
          variables, _images(7, (2, 8, 8, 3)), jax.random.key(8))
  assert terms['unsup'] > 0
  # The mean ||r_adv|| of the batch, for the log: eps unless a direction vanished.
  assert cct.sown([updates]) == pytest.approx(
      {'perturbation_norm_input_vat': config.baselines.input_vat.eps}, rel=1e-5)


def test_baseline_config_errors_name_the_key():
  config = _tiny_config('input_vat')
  config.baselines.input_vat.method = 'power'
  with pytest.raises(ValueError, match=r"baselines.input_vat.method 'power'"):
    segmentation.check_config(config)
  config = _tiny_config('mean_teacher')
  config.baselines.mean_teacher.decay = 1.5
  with pytest.raises(ValueError, match=r'baselines.mean_teacher.decay must be in \[0, 1\]'):
    segmentation.check_config(config)
  config.train.mode = 'mean-teacher'
  with pytest.raises(ValueError, match=r"train.mode must be one of .*'mean-teacher'"):
    segmentation.check_config(config)


# --------------------------------------------------------------------------------------
# Cluster-assumption maps.


def test_cluster_map_of_a_two_colour_image_peaks_on_the_boundary_and_is_zero_when_flat():
  image = np.zeros((40, 40, 3), np.float32)
  image[:, :, 0] = 0.2
  image[:, 20:] = (0.9, 0.1, 0.5)  # the boundary lies between columns 19 and 20
  for patch in (1, 20):
    distances = cluster_maps.neighbour_distance(image, patch)
    assert distances.shape == (40, 40)
    # Every position's window reaches the boundary within patch // 2 columns of it.
    reach = patch // 2 + 1
    assert np.all(distances[:, :19 - reach] == 0) and np.all(distances[:, 21 + reach:] == 0)
    assert np.all(distances[:, 19:21] == distances.max()) and distances.max() > 0
  only_edges = cluster_maps.neighbour_distance(image, 1)
  assert np.array_equal(np.nonzero(only_edges.any(axis=0))[0], [19, 20])
  # Three of a boundary pixel's 8 neighbours lie across: 3 * ||colour difference|| / 8.
  np.testing.assert_allclose(only_edges[5, 19], 3 * np.linalg.norm(image[0, 20] - image[0, 0])
                             / 8, rtol=1e-6)


def test_cluster_map_heat_map_is_dark_where_the_distance_is_high():
  grey = cluster_maps.heat_map(np.array([[0.0, 1.0], [2.0, 4.0]]))
  assert grey.dtype == np.uint8 and grey[0, 0] == 255 and grey[1, 1] == 0
  assert np.all(cluster_maps.heat_map(np.zeros((3, 3))) == 255)


# --------------------------------------------------------------------------------------
# Both baselines in the single-domain trainer (the multi-domain one:
# tests/test_multidomain_methods.py; the command line: the demo's smoke run, test_train.py).


def test_mean_teacher_and_input_vat_train_and_evaluate_on_the_demo(tmp_path):
  config = defaults.load_config_file(os.path.join(REPO, 'configs', 'demo.py'), 'smoke')
  config.train.update(num_steps=2, num_pictures=0)
  config.baselines.input_vat.method = 'finite_difference'  # half the compile of 'hvp'
  for mode in ('mean_teacher', 'input_vat'):
    config.train.mode = mode
    workdir = tmp_path / mode
    results = train.train_and_evaluate(config, str(workdir))
    assert results['step'] == 2 and 0 <= results['miou'] <= 1
    assert (workdir / 'results_test.json').exists()
    with open(workdir / 'metrics.jsonl') as f:
      unsup = [line for line in f if '"loss_unsup"' in line]
    assert len(unsup) == 2, f'{mode}: {len(unsup)} steps logged an unsupervised loss'

  # The Mean Teacher checkpoint holds the teacher, and it differs from the student.
  config.train.mode = 'mean_teacher'
  model, method = methods.build(config)
  mesh = parallel.data_mesh()
  shapes = jax.eval_shape(lambda: train_step.create_train_state(config, model, method, 2, mesh))
  abstract = checkpointing.abstract_with_sharding(shapes, parallel.replicated(mesh))
  state = checkpointing.restore(
      checkpointing.manager(str(tmp_path / 'mean_teacher' / 'checkpoints')), abstract)
  assert int(state.step) == 2
  teacher, student = _leaves(state.extra['teacher']['params']), _leaves(state.params)
  assert all(np.all(np.isfinite(t)) for t in teacher)
  assert any(not np.allclose(t, s) for t, s in zip(teacher, student))
