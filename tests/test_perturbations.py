"""Invariants of the seven perturbations (paper sec. 3.2.3, App. G) and their config."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cct_jax import errors, perturbations as pt
from cct_jax.models.decoders import Decoder

NUM_CLASSES = 5
STRIDE = 8


def _key(seed):
  # The invariants below hold for any PRNG; 'rbg' keys compile in a tenth of the time of
  # the default partitionable threefry on CPU. The device test uses the default keys.
  return jax.random.key(seed, impl='rbg')


def _positive_z(seed, shape):
  # Strictly positive so that ratios z~/z are defined (z follows a ReLU in the model).
  return jnp.asarray(np.random.default_rng(seed).uniform(0.1, 1.0, shape), jnp.float32)


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _jit(perturbation, **hyper_parameters):
  # One compilation per call site: eager op-by-op dispatch is slower on these CPUs.
  return jax.jit(functools.partial(perturbation, **hyper_parameters))


@pytest.fixture(scope='module')
def decoder():
  module = Decoder(NUM_CLASSES)
  params = module.init(_key(0), jnp.zeros((1, 4, 4, 16)))['params']
  return module, params


def test_each_block_carries_its_count_and_hyper_parameters():
  cfg = pt.default_perturbation_config()
  counts = pt.decoder_counts(cfg)
  # The paper's roster (sec. 4.4.1), K = 30, in name order: the model's stacking order.
  assert counts == dict(context_mask=2, cutout=6, dropout=6, feature_drop=6, feature_noise=6,
                        object_mask=2, vat=2)
  assert list(counts) == sorted(counts)
  built = pt.build_perturbations(cfg)
  assert list(built) == list(counts)
  assert built['cutout'].keywords == dict(erase=0.4, background_class=0)  # shared field
  assert built['vat'].keywords == dict(method='auto', xi=1e-6, eps=2.0, iterations=1,
                                       normalisation='authors')
  cfg.background_class = 3
  cfg.feature_noise.uniform_range = 0.1
  pt.set_counts(cfg, dict(context_mask=0, object_mask=0))
  built = pt.build_perturbations(cfg)
  assert 'context_mask' not in built and 'object_mask' not in built
  assert built['cutout'].keywords['background_class'] == 3
  assert built['feature_noise'].keywords == dict(uniform_range=0.1)
  assert pt.resolved_vat_method('auto') == 'finite_difference'  # on the CPU
  with pytest.raises(ValueError, match=r"unknown perturbation types \['vta'\]"):
    pt.set_counts(cfg, dict(vta=1))


def _misspelt_field(cfg):
  cfg.dropout.rte = 0.5


def _misspelt_type(cfg):
  cfg.feature_nosie = dict(count=2)


def _unknown_vat_method(cfg):
  cfg.vat.method = 'nope'


def _unknown_gamma_sharing(cfg):
  cfg.feature_drop.gamma_per = 'image'


def _reversed_gamma_range(cfg):
  cfg.feature_drop.gamma_range = (0.9, 0.6)


@pytest.mark.parametrize('mistake, message', [
    (_unknown_vat_method, r"perturbations.vat.method 'nope'"),
    (_unknown_gamma_sharing, r"feature_drop.gamma_per 'image' not in \('batch', 'sample'\)"),
    (_reversed_gamma_range, r'feature_drop.gamma_range \(0.9, 0.6\) is not a range'),
    (_misspelt_field, r"perturbations.dropout: no hyper-parameter 'rte'"),
    (_misspelt_type, r"unknown perturbation types \['feature_nosie'\]")])
def test_config_mistakes_are_named(mistake, message):
  cfg = pt.default_perturbation_config()
  cfg.vat.count = 0  # a block is checked whether it trains decoders or not
  mistake(cfg)
  with pytest.raises(ValueError, match=message):
    pt.build_perturbations(cfg)


def test_a_new_perturbation_is_a_function_and_its_block(monkeypatch):
  monkeypatch.setattr(pt, 'PERTURBATIONS', dict(pt.PERTURBATIONS))

  @pt.register('scaled', dict(count=3, factor=0.5))
  def scaled(z, key, main_prediction, decode, *, factor, background_class):
    del key, main_prediction, decode
    return z * factor + background_class

  cfg = pt.default_perturbation_config()
  assert cfg.scaled.to_dict() == dict(count=3, factor=0.5)
  cfg.background_class = 2
  assert pt.decoder_counts(cfg)['scaled'] == 3
  built = pt.build_perturbations(cfg)['scaled']
  np.testing.assert_array_equal(built(jnp.ones((1, 2, 2, 1)), None, None, None), 2.5)


def test_feature_drop_zeroes_exactly_the_active_positions():
  z = _positive_z(1, (2, 8, 8, 16))
  out = _jit(pt.feature_drop, gamma_range=(0.75, 0.75), gamma_per='sample')(
      z, _key(2), None, None)
  attention = np.asarray(z).mean(-1)
  normalised = attention / attention.max(axis=(1, 2), keepdims=True)
  dropped = normalised >= 0.75
  assert 0 < dropped.sum() < dropped.size
  np.testing.assert_array_equal(np.asarray(out), np.where(dropped[..., None], 0.0, z))


def test_feature_drop_fraction_follows_gamma_range_per_batch_or_per_sample():
  cfg = pt.default_perturbation_config()
  assert cfg.feature_drop.to_dict() == dict(count=6, gamma_range=(0.7, 0.9), gamma_per='batch')
  # Channel means spread evenly over (0, 1], so the dropped fraction is ~ 1 - gamma.
  levels = (jnp.arange(64, dtype=jnp.float32) + 1) / 64
  z = jnp.broadcast_to(levels.reshape(1, 8, 8, 1), (4, 8, 8, 4))
  keys = jax.random.split(_key(3), 100)

  @jax.jit
  def dropped_fractions(keys):
    def one(key, gamma_range, gamma_per):
      out = pt.feature_drop(z, key, None, None, gamma_range=gamma_range, gamma_per=gamma_per)
      return jnp.mean(out[..., 0] == 0, axis=(1, 2))  # per sample
    return (jax.vmap(lambda k: one(k, (0.6, 0.9), 'sample'))(keys),
            jax.vmap(lambda k: one(k, (0.7, 0.9), 'batch'))(keys))

  paper, authors = map(np.asarray, dropped_fractions(keys))  # (calls, samples)
  # Paper: "we mask 10% to 40% of the most active regions".
  assert paper.min() >= 0.1 - 1 / 64 and paper.max() <= 0.4 + 1 / 64
  assert abs(paper.mean() - 0.25) < 0.03
  assert authors.min() >= 0.1 - 1 / 64 and authors.max() <= 0.3 + 1 / 64
  assert abs(authors.mean() - 0.2) < 0.03
  # The samples of one call (identical here) share gamma per batch, not per sample.
  assert np.all(authors == authors[:, :1]) and len(np.unique(authors[:, 0])) > 5
  assert np.mean(paper[:, 0] != paper[:, 1]) > 0.5


def test_feature_noise_is_one_relative_tensor_shared_by_the_batch():
  z = _positive_z(4, (3, 8, 8, 16))
  out = _jit(pt.feature_noise, uniform_range=0.3)(z, _key(5), None, None)
  relative = np.asarray((out - z) / z)
  np.testing.assert_allclose(relative, np.broadcast_to(relative[:1], relative.shape),
                             atol=1e-5)
  assert np.abs(relative).max() <= 0.3 + 1e-5
  assert relative.max() > 0.25 and relative.min() < -0.25


def test_dropout_drops_whole_channels_per_sample_and_doubles_survivors():
  z = _positive_z(6, (64, 2, 2, 16))
  out = np.asarray(_jit(pt.dropout, rate=0.5)(z, _key(7), None, None))
  ratio = out / np.asarray(z)
  channel = ratio[:, :1, :1, :]
  np.testing.assert_allclose(ratio, np.broadcast_to(channel, ratio.shape), rtol=1e-6)
  assert set(np.unique(np.round(channel, 5))) == {0.0, 2.0}
  assert abs((channel == 0).mean() - 0.5) < 0.06
  assert np.any(channel[0] != channel[1])


def test_context_and_object_masks_are_complementary_every_eighth_pixel():
  z = _positive_z(8, (2, 4, 4, 16))
  prediction = jnp.argmax(_normal(9, (2, 4 * STRIDE, 4 * STRIDE, NUM_CLASSES)), -1)
  for background in (0, 3):
    context = _jit(pt.context_mask, background_class=background)(z, None, prediction, None)
    objects = _jit(pt.object_mask, background_class=background)(z, None, prediction, None)
    foreground = np.asarray(prediction)[:, ::STRIDE, ::STRIDE] != background
    assert 0 < foreground.sum() < foreground.size
    np.testing.assert_array_equal(context, np.where(foreground[..., None], z, 0.0))
    np.testing.assert_array_equal(objects, np.where(foreground[..., None], 0.0, z))
    np.testing.assert_array_equal(context + objects, z)


def _two_objects():
  """One sample: an L-shaped class-1 object, a class-2 block; one background sample."""
  labels = np.zeros((2, 32, 32), np.int32)
  # Sides of 22, 11, 7 and 9 pixels: 0.4 x side is never a whole number.
  labels[0, 4:26, 2:7] = 1  # L: rows 4-25, columns 2-12
  labels[0, 21:26, 2:13] = 1
  labels[0, 10:17, 20:29] = 2  # rows 10-16, columns 20-28
  return jnp.asarray(labels)


def test_guided_cutout_cuts_point_four_of_each_side_inside_object_boxes():
  prediction = _two_objects()
  keys = jax.random.split(_key(10), 200)
  masks = jax.jit(jax.vmap(functools.partial(
      pt.cutout_keep_mask, prediction, num_classes=NUM_CLASSES, erase=0.4,
      background_class=0)))(keys)
  cut = ~np.asarray(masks)  # (keys, B, 32, 32)
  assert not cut[:, 1].any()  # background only: nothing is cut
  boxes = {1: (4, 26, 2, 13), 2: (10, 17, 20, 29)}  # bounding boxes, end exclusive
  inside_any = np.zeros((32, 32), bool)
  for (r0, r1, c0, c1) in boxes.values():
    inside_any[r0:r1, c0:c1] = True
  assert not cut[:, 0, ~inside_any].any()
  for (r0, r1, c0, c1) in boxes.values():
    height, width = int(0.4 * (r1 - r0)), int(0.4 * (c1 - c0))
    region = cut[:, 0, r0:r1, c0:c1]
    rows = np.flatnonzero(region.any(axis=(0, 2)))  # over all keys
    starts = []
    for one in region:
      r, c = np.nonzero(one)
      assert one.sum() == height * width
      assert r.max() - r.min() + 1 == height and c.max() - c.min() + 1 == width
      starts.append(r.min())
    # Uniform offsets: every position in the box is reachable, first and last included.
    assert rows.min() == 0 and rows.max() == r1 - r0 - 1
    assert len(set(starts)) == r1 - r0 - height + 1


def test_guided_cutout_on_z_takes_every_eighth_pixel_of_the_full_mask():
  prediction = _two_objects()
  z = _positive_z(11, (2, 4, 4, 8))
  key = _key(12)
  full = _jit(pt.cutout_keep_mask, num_classes=NUM_CLASSES, erase=0.4,
              background_class=0)(prediction, key)
  # G-Cutout takes the class count from its decoder's output shape, decoding nothing.
  decode = lambda h: jnp.zeros((h.shape[0], h.shape[1] * h.shape[2], 64, NUM_CLASSES))
  out = _jit(pt.guided_cutout, erase=0.4, background_class=0, decode=decode)(z, key,
                                                                            prediction)
  expected = np.where(np.asarray(full)[:, ::STRIDE, ::STRIDE, None], z, 0.0)
  np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize('method', ['finite_difference', 'hvp'])
def test_vat_norm_is_eps_and_no_gradient_through_r_adv(decoder, method):
  module, params = decoder
  decode = lambda z: module.apply({'params': params}, z)
  z = _positive_z(13, (2, 4, 4, 16))
  perturb = functools.partial(pt.vat, key=_key(14), main_prediction=None,
                              decode=decode, method=method, xi=1e-6, eps=2.0,
                              iterations=1, normalisation='exact')
  tangent = _normal(15, z.shape)
  out, out_tangent = jax.jit(lambda z, t: jax.jvp(perturb, (z,), (t,)))(z, tangent)
  norms = np.linalg.norm(np.asarray(out - z).reshape(2, -1), axis=1)
  np.testing.assert_allclose(norms, 2.0, rtol=1e-4)
  np.testing.assert_array_equal(out_tangent, tangent)  # d z~ / d z = identity


@pytest.mark.parametrize('method', ['finite_difference', 'hvp'])
def test_vat_authors_normalisation_shrinks_r_adv_where_the_gradient_is_below_1e_8(decoder,
                                                                                 method):
  """The authors' g / (||g|| + 1e-8): at their xi = 1e-6 the gradient (about xi^2 ||H d||)
  is far below 1e-8 and r_adv far shorter than eps; at a large xi it is a unit vector."""
  module, params = decoder
  decode = lambda z: module.apply({'params': params}, z)
  z = _positive_z(13, (2, 4, 4, 16))
  norm = lambda xi: np.linalg.norm(np.asarray(jax.jit(lambda z: pt.vat(
      z, _key(14), None, decode, method=method, xi=xi, eps=2.0, iterations=1,
      normalisation='authors'))(z) - z).reshape(2, -1), axis=1)
  assert np.all(norm(1e-6) < 0.2), norm(1e-6)
  np.testing.assert_allclose(norm(10.0), 2.0, rtol=1e-3)
  cfg = pt.default_perturbation_config()
  cfg.vat.normalisation = 'unit'
  with pytest.raises(errors.UserError, match="normalisation 'unit' not in"):
    pt.build_perturbations(cfg)


def test_vat_finite_difference_direction_matches_hvp_in_float64(decoder):
  module, params = decoder
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    decode = lambda z: module.apply({'params': params64}, z)
    z = jnp.asarray(_positive_z(16, (2, 4, 4, 16)), jnp.float64)
    key = _key(17)

    @jax.jit
    def directions(z, key):
      return {method: pt.vat(z, key, None, decode, method=method, xi=xi, eps=1.0,
                             iterations=1, normalisation='exact') - z
              for method, xi in (('finite_difference', 1e-5), ('hvp', None))}

    r = {name: np.asarray(d).reshape(2, -1) for name, d in directions(z, key).items()}
  assert r['hvp'].dtype == np.float64
  cosine = np.sum(r['finite_difference'] * r['hvp'], axis=1)  # both are unit vectors
  assert np.all(cosine > 0.99), cosine


def test_every_perturbation_is_the_same_on_one_and_four_devices(decoder):
  """Same key, batch on 1 device or split over 4: the same z~.

  I-VAT runs a decoder forward/backward whose reductions may round differently once
  sharded, so it gets a float32 tolerance, and uses the 'hvp' method: at the default
  xi = 1e-6, xi * d is below the float32 resolution of z, so the finite-difference
  direction is largely rounding noise (`perturbations.resolved_vat_method`) and changes with
  any reduction order.
  """
  module, params = decoder
  cfg = pt.default_perturbation_config()
  cfg.vat.method = 'hvp'
  perturbations = pt.build_perturbations(cfg)
  assert len(perturbations) == 7

  @jax.jit
  def perturb_all(z, prediction, params, key):
    decode = lambda z: module.apply({'params': params}, z)
    keys = jax.random.split(key, len(perturbations))
    return {name: fn(z, k, prediction, decode)
            for (name, fn), k in zip(perturbations.items(), keys)}

  z = _positive_z(18, (4, 4, 4, 16))
  prediction = jnp.argmax(_normal(19, (4, 32, 32, NUM_CLASSES)), -1)
  key = jax.random.key(20)
  single = perturb_all(z, prediction, params, key)

  mesh = jax.make_mesh((4,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  batch, replicated = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
  sharded = perturb_all(jax.device_put(z, batch), jax.device_put(prediction, batch),
                        jax.device_put(params, replicated), key)
  assert len(sharded['dropout'].sharding.device_set) == 4
  for name in perturbations:
    if name == 'vat':
      np.testing.assert_allclose(sharded[name], single[name], atol=1e-5, err_msg=name)
    else:
      np.testing.assert_array_equal(sharded[name], single[name], err_msg=name)
