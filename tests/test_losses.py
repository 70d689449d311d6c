"""Losses of CCT (paper sec. 3.2, App. B): values, ignore handling, and where gradients go."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from cct_jax import defaults, losses, methods, models, perturbations
from cct_jax import perturbations as pt
from cct_jax.models import cct
from cct_jax.models.decoders import Decoder

B, H, W, C, K = 2, 8, 8, 4, 3


def _normal(seed, shape, scale=2.0):
  return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _labels(seed, ignore_fraction=0.25):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, C, (B, H, W))
  labels[rng.random((B, H, W)) < ignore_fraction] = 255
  return jnp.asarray(labels, jnp.int32)


def _np_pixel_ce(logits, labels):
  logits = np.asarray(logits, np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  safe = np.where(labels == 255, 0, labels)
  return -np.take_along_axis(log_probs, safe[..., None], -1)[..., 0]


def _softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_cross_entropy_is_the_mean_over_non_ignored_pixels():
  logits, labels = _normal(0, (B, H, W, C)), np.asarray(_labels(1))
  valid = labels != 255
  expected = _np_pixel_ce(logits, labels)[valid].mean()
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected, rtol=1e-5)


def test_ab_cross_entropy_threshold_and_hardest_pixel_per_image():
  logits, labels = _normal(2, (B, H, W, C)), np.array(_labels(3))
  labels[1] = 255  # the second image has no valid pixel
  valid = labels != 255
  ce = _np_pixel_ce(logits, labels)
  p_true = np.exp(-ce)
  ab_ce = jax.jit(losses.ab_cross_entropy)
  # eta above every probability: plain CE.
  np.testing.assert_allclose(ab_ce(logits, labels, 1.01), ce[valid].mean(), rtol=1e-5)
  # eta = 0: only each image's hardest valid pixel (image 1 has none).
  hardest = ce[0][valid[0]].max()
  np.testing.assert_allclose(ab_ce(logits, labels, 0.0), hardest, rtol=1e-5)
  # In between: the pixels below eta, plus the hardest (already below eta).
  eta = np.median(p_true[valid])
  kept = valid & (p_true < eta)
  np.testing.assert_allclose(ab_ce(logits, labels, eta), ce[kept].mean(), rtol=1e-5)


def test_consistency_distances_match_equations_7_to_9():
  aux, main = _normal(4, (K, B, H, W, C)), _normal(5, (B, H, W, C))
  q, p = _softmax(aux), _softmax(main)[None]
  m = 0.5 * (p + q)
  kl = lambda a, b: np.sum(a * np.log(a / b), -1)
  expected = {'mse': np.mean((q - p) ** 2), 'kl': kl(p, q).mean(),
              'js': (0.5 * kl(p, m) + 0.5 * kl(q, m)).mean()}
  for distance, value in expected.items():
    np.testing.assert_allclose(losses.consistency_loss(aux, main, distance), value,
                               rtol=1e-4)
    same = losses.consistency_loss(jnp.stack([main] * K), main, distance)
    assert abs(float(same)) < 1e-6
  with pytest.raises(ValueError):
    losses.consistency_loss(aux, main, 'l1')


def test_confidence_mask_keeps_only_confident_main_pixels():
  aux, main = _normal(6, (K, B, H, W, C)), _normal(7, (B, H, W, C))
  confident = _softmax(main).max(-1) > 0.5
  assert 0 < confident.sum() < confident.size
  se = (_softmax(aux) - _softmax(main)[None]) ** 2
  expected = se[:, confident].mean()
  np.testing.assert_allclose(losses.consistency_loss(aux, main, 'mse', 0.5), expected,
                             rtol=1e-5)


def test_losses_are_finite_with_nothing_to_average():
  aux, main = _normal(8, (K, B, H, W, C)), _normal(9, (B, H, W, C))
  ignored = jnp.full((B, H, W), 255, jnp.int32)
  fns = {
      'ce': lambda a, m: losses.cross_entropy(m, ignored),
      'ab_ce': lambda a, m: losses.ab_cross_entropy(m, ignored, 0.5),
      'weak': lambda a, m: losses.weak_loss(a, ignored),
      # No main probability exceeds 1: every pixel is masked out.
      'masked_mse': lambda a, m: losses.consistency_loss(a, m, 'mse', 1.0),
      'masked_js': lambda a, m: losses.consistency_loss(a, m, 'js', 1.0),
  }

  @jax.jit
  def values_and_grads(aux, main):
    return {name: jax.value_and_grad(fn, argnums=(0, 1))(aux, main)
            for name, fn in fns.items()}

  for name, (value, grads) in values_and_grads(aux, main).items():
    assert float(value) == 0.0, name
    for g in grads:
      assert np.all(np.asarray(g) == 0.0), name


def test_weak_loss_is_the_mean_over_decoders_of_ce():
  aux, labels = _normal(10, (K, B, H, W, C)), _labels(11)
  expected = np.mean([losses.cross_entropy(a, labels) for a in aux])
  np.testing.assert_allclose(losses.weak_loss(aux, labels), expected, rtol=1e-6)


def test_pairwise_loss_is_the_trainable_variance_of_auxiliary_predictions():
  aux = _normal(12, (K, B, H, W, C))
  q = _softmax(aux)
  expected = ((q - q.mean(0)) ** 2).mean(0).sum(-1).mean()
  np.testing.assert_allclose(losses.pairwise_loss(aux), expected, rtol=1e-5)
  assert float(losses.pairwise_loss(jnp.stack([aux[0]] * K))) < 1e-7
  value, grad = jax.value_and_grad(losses.pairwise_loss)(aux, jax.random.key(0, impl='rbg'),
                                                         2)
  assert value > 0
  # Two of the three decoders were drawn: exactly those receive a gradient.
  trained = [bool(np.any(np.asarray(g) != 0)) for g in grad]
  assert sum(trained) == 2


def test_consistency_trains_encoder_and_auxiliary_decoders_not_the_main_decoder():
  """L_u flows into the encoder through z (also through I-VAT's z + r_adv), never g."""
  encoder, decoder = nn.Dense(16), Decoder(C)
  key = jax.random.key(0, impl='rbg')
  x = _normal(13, (B, 2, 2, 3), scale=1.0)
  params = {'encoder': encoder.init(key, x)['params'],
            'main': decoder.init(key, jnp.zeros((1, 2, 2, 16)))['params'],
            'aux': jax.vmap(lambda k: decoder.init(k, jnp.zeros((1, 2, 2, 16)))['params'])(
                jax.random.split(key, 2))}
  roster = pt.build_perturbations(pt.default_perturbation_config())
  chosen = (roster['vat'], roster['feature_noise'])

  def unsupervised_loss(params):
    z = nn.relu(encoder.apply({'params': params['encoder']}, x))
    main_logits = decoder.apply({'params': params['main']}, z)
    aux_logits = []
    for k, perturb in enumerate(chosen):
      aux_params = jax.tree.map(lambda p: p[k], params['aux'])
      decode = functools.partial(decoder.apply, {'params': aux_params})
      z_tilde = perturb(z, jax.random.fold_in(key, k), jnp.argmax(main_logits, -1), decode)
      aux_logits.append(decode(z_tilde))
    return losses.consistency_loss(jnp.stack(aux_logits), main_logits)

  grads = jax.jit(jax.grad(unsupervised_loss))(params)
  norm = lambda tree: float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(tree)))
  assert norm(grads['main']) == 0.0
  assert norm(grads['encoder']) > 0.0
  for k in range(len(chosen)):
    assert norm(jax.tree.map(lambda g: g[k], grads['aux'])) > 0.0


def test_remat_gives_the_same_unsupervised_and_weak_losses_and_gradients():
  """model.remat=('trunk', 'decoders'): the trunk's blocks recomputed, the auxiliary
  decoders run one at a time with their losses taken as each runs (tiny model, VAT's
  inner gradient and F-Noise): the same terms and parameter gradients as without."""
  config = defaults.base_config()
  config.model = models.tiny_model_config(num_classes=5)
  perturbations.set_counts(config.perturbations, {
      name: {'vat': 1, 'feature_noise': 2}.get(name, 0)
      for name in perturbations.decoder_counts(config.perturbations)})
  config.perturbations.vat.method = 'hvp'
  rng = np.random.default_rng(1)
  batch = {'image': jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32),
           'mask': jnp.asarray(rng.integers(0, 5, (2, 32, 32)), jnp.int32)}
  model = models.model_from_config(config.model, methods.aux_counts(config))
  variables = jax.jit(lambda k: models.init_variables(model, k, (1, 32, 32, 3)))(
      jax.random.key(0))

  def terms_and_grads(remat):
    config.model.remat = remat
    methods.check_config(config)
    model = models.model_from_config(config.model, methods.aux_counts(config))
    term = methods.get(config).make_term(config, model)

    def total(params):
      terms, updates = term(params, variables['batch_stats'], {}, batch, jax.random.key(3))
      return terms['unsup'] + terms['weak'], (terms, cct.sown([updates]))

    return jax.jit(jax.grad(total, has_aux=True))(variables['params'])

  grads, (terms, sown) = terms_and_grads(())
  remat_grads, (remat_terms, remat_sown) = terms_and_grads(('trunk', 'decoders'))
  assert set(terms) == set(remat_terms) == {'unsup', 'weak'}
  for name in terms:
    np.testing.assert_allclose(remat_terms[name], terms[name], rtol=1e-5, err_msg=name)
  # The perturbations' sizes for the log, each type's mean over its decoders and samples.
  assert sown.keys() == remat_sown.keys() == {'perturbation_norm_vat',
                                              'perturbation_norm_feature_noise'}
  for name in sown:
    assert sown[name] > 0
    np.testing.assert_allclose(remat_sown[name], sown[name], rtol=1e-5, err_msg=name)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(remat_grads),
                          jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max(),
                               err_msg=jax.tree_util.keystr(path))
  config.loss.pairwise_weight = 1.0
  with pytest.raises(ValueError, match="pairwise_weight > 0 compares"):
    methods.check_config(config)
