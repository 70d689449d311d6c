"""The network (paper sec. 3.2, 4.1): shapes, PyTorch conventions, parameter counts, stacked
decoders, initialisation, and the convolution it computes with."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from cct_jax import cpu_conv, defaults, losses, models, summary
from cct_jax.models import cct, decoders, discriminator, padding, psp, resnet


def tiny_model(**overrides):
  encoder = cct.Encoder(stage_sizes=(1, 1, 1, 1), width=4, psp_features=16)
  return cct.CCT(num_classes=5, encoder=encoder, **overrides)


def test_odd_input_gives_pytorch_feature_and_logit_sizes():
  model = tiny_model(aux_counts=dict(dropout=2))
  variables = jax.eval_shape(lambda k: cct.init_variables(model, k, (2, 321, 321, 3)),
                             jax.random.key(0))
  x = jax.ShapeDtypeStruct((2, 321, 321, 3), jnp.float32)
  z = jax.eval_shape(lambda v, x: model.apply(v, x, method=lambda m, x: m.encoder(x)),
                     variables, x)
  assert z.shape == (2, 41, 41, 16)
  decoded = jax.eval_shape(lambda v, z: model.apply(v, z, method=lambda m, z: m.main_decoder(z)),
                           variables, z)
  assert decoded.shape == (2, 328, 328, 5)
  # The main logits at the input size, or with sub_pixel=True at the decoders' resolution,
  # where the consistency loss compares them with the auxiliary decoders' (as the
  # authors'), in their sub-pixel order: 328 x 328.
  for sub_pixel, shape in ((False, (2, 321, 321, 5)), (True, (2, 41 * 41, 8 * 8, 5))):
    main, aux_logits = jax.eval_shape(
        lambda v, x: (lambda main, aux: (main, aux['dropout'].map(lambda l: l)[0]))(
            *model.apply(v, x, perturbations=dict(dropout=cct.identity_perturbation),
                         key=jax.random.key(1), sub_pixel=sub_pixel)), variables, x)
    assert main.shape == shape
    assert aux_logits.shape == (2, 2, 41 * 41, 8 * 8, 5)


@pytest.mark.parametrize('output_stride, side', [(8, 40), (8, 37), (16, 40)])
def test_a_loss_on_sub_pixel_logits_is_the_loss_on_the_pictures_logits(output_stride, side):
  """The train step's CE takes the main logits in sub-pixel order (sub_pixel=True) and
  the labels paired with them (`pixel_pairing`): labels reordered where they have the
  decoders' resolution (40 at output stride 8), else the logits put back in pixel order
  and resized (37: the decoders give 40; output stride 16: they give 24). Either way the
  loss is the one on the logits the model gives at the input size; so is the main
  prediction the perturbations get, the argmax of the decoders' own resolution."""
  encoder = cct.Encoder(stage_sizes=(1, 1, 1, 1), width=4, psp_features=16,
                        output_stride=output_stride)
  model = cct.CCT(num_classes=5, encoder=encoder, aux_counts=dict(context_mask=1))
  x = jax.random.normal(jax.random.key(0), (2, side, side, 3))
  labels = jax.random.randint(jax.random.key(1), (2, side, side), 0, 5)
  variables = jax.jit(lambda k: cct.init_variables(model, k, x.shape))(jax.random.key(2))
  @jax.jit
  def both(variables):
    picture, _ = model.apply(variables, x)
    sub_pixel, aux = model.apply(variables, x, sub_pixel=True, key=jax.random.key(3),
                                 perturbations=dict(context_mask=cct.identity_perturbation))
    rows = cct.feature_rows(side, output_stride)
    paired_labels, paired = cct.pixel_pairing(labels, sub_pixel.shape, rows)
    natural = model.apply(variables, x, method=lambda m, x: m.main_decoder(m.encoder(x)))
    return (losses.cross_entropy(picture, labels),
            losses.cross_entropy(paired(sub_pixel), paired_labels),
            aux['context_mask'].main_prediction, jnp.argmax(natural, -1))

  on_picture, on_sub_pixel, prediction, expected = both(variables)
  assert on_picture > 1.0
  np.testing.assert_allclose(on_sub_pixel, on_picture, rtol=1e-6)
  np.testing.assert_array_equal(prediction, expected)


@pytest.mark.parametrize('output_stride, size', [(4, 81), (8, 41), (16, 21)])
def test_output_stride(output_stride, size):
  trunk = resnet.ResNet(stage_sizes=(1, 1, 1, 1), width=4, output_stride=output_stride)
  x = jax.ShapeDtypeStruct((1, 321, 321, 3), jnp.float32)
  out = jax.eval_shape(lambda x: trunk.init_with_output(jax.random.key(0), x)[0], x)
  assert out.shape == (1, size, size, 128)


@pytest.mark.parametrize('output_stride', [8, 16])
def test_padding_extents_are_each_stage_shape_of_the_image_alone(output_stride):
  """Each image's rows and columns at every stage of a 40 x 56 canvas (multiples of 8, not
  of 16) are that stage's shape for the image alone, padded to a multiple of 8: at output
  stride 16, layer3 has ceil(40 / 16) = 3 rows, and 40 // 3 is no stride."""
  trunk = resnet.ResNet(stage_sizes=(1, 1, 1, 1), width=4, output_stride=output_stride)

  def stage_shapes(h, w):
    x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    _, stages = jax.eval_shape(
        lambda x: trunk.init_with_output(jax.random.key(0), x, return_stages=True)[0], x)
    return {name: stage.shape[1:3] for name, stage in stages.items()}

  canvas = (40, 56)
  in_canvas = stage_shapes(*canvas)
  for size in [(40, 56), (17, 30), (24, 9), (1, 1)]:
    alone = stage_shapes(*map(int, padding.alone_sizes(np.array(size))))
    for name, shape in in_canvas.items():
      assert tuple(padding.extents(np.array([size]), canvas, shape)[0]) == alone[name], name


def test_adaptive_pool_uses_pytorch_bin_edges_on_41():
  weights = np.asarray(psp.adaptive_pool_weights(jnp.array([41]), 41, 6)[0])
  edges = [(np.flatnonzero(row)[0], np.flatnonzero(row)[-1] + 1) for row in weights]
  # floor(i * 41 / 6), ceil((i + 1) * 41 / 6): neighbouring bins overlap by one row.
  assert edges == [(0, 7), (6, 14), (13, 21), (20, 28), (27, 35), (34, 41)]
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)

  x = np.random.default_rng(0).normal(size=(2, 41, 41, 3)).astype(np.float32)
  pooled = np.asarray(psp.adaptive_avg_pool(jnp.asarray(x), 3, jnp.array([[41, 41]] * 2)))
  for i in range(3):
    for j in range(3):
      rows = slice(i * 41 // 3, -(-(i + 1) * 41 // 3))
      cols = slice(j * 41 // 3, -(-(j + 1) * 41 // 3))
      np.testing.assert_allclose(pooled[:, i, j], x[:, rows, cols].mean(axis=(1, 2)), rtol=1e-5,
                                 atol=1e-6)


def test_pixel_shuffle_matches_pytorch_channel_order():
  b, h, w, c, s = 2, 3, 4, 5, 2
  x = np.random.default_rng(1).normal(size=(b, h, w, c * s * s)).astype(np.float32)
  reference = np.zeros((b, h * s, w * s, c), np.float32)
  for y in range(h):
    for xx in range(w):
      for ch in range(c):
        for i in range(s):
          for j in range(s):
            reference[:, s * y + i, s * xx + j, ch] = x[:, y, xx, s * s * ch + s * i + j]
  np.testing.assert_array_equal(np.asarray(decoders.pixel_shuffle(jnp.asarray(x))), reference)


def test_sub_pixel_logits_are_the_shuffled_logits_in_sub_pixel_order():
  levels = 2  # with a widened block and no final ReLU (the default decoder: test above)
  decoder = decoders.Decoder(5, levels, final_relu=False, width=7)
  z = jax.random.normal(jax.random.key(0), (2, 3, 4, 6))
  params = decoder.init(jax.random.key(1), z)['params']
  # ICNR starts the four sub-pixels of each block equal: make them differ.
  params = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(2), a.shape), params)

  @jax.jit
  def both(params, z):
    natural = decoder.apply({'params': params}, z)
    return natural, decoders.sub_pixel_logits(decoder, params, z)

  natural, sub_pixels = both(params, z)
  reordered = losses.sub_pixel_order(natural, levels)
  assert reordered.shape == (2, 3 * 4, 4**levels, 5)
  np.testing.assert_allclose(sub_pixels, reordered, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(losses.pixel_order(reordered, levels, 3), natural)


def test_icnr_kernel_repeats_each_sub_kernel_over_its_four_outputs():
  kernel = np.asarray(decoders.icnr_init()(jax.random.key(0), (7, 28)))
  groups = kernel.reshape(7, 7, 4)
  np.testing.assert_array_equal(groups, np.repeat(groups[..., :1], 4, axis=-1))
  assert np.std(kernel[:, ::4]) > 0.1  # not all equal: a real random sub-kernel


def test_align_corners_resize_keeps_corners_and_is_linear():
  weights = cct.align_corners_matrix(321, 328)
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
  assert weights[0, 0] == 1.0 and weights[-1, -1] == 1.0
  ramp = np.arange(328, dtype=np.float32)
  np.testing.assert_allclose(weights @ ramp, np.linspace(0, 327, 321), rtol=1e-5)


def test_full_voc_model_parameter_counts():
  config = defaults.base_config()
  assert summary.parameter_counts(config) == dict(
      trunk=23_631_808, psp=23_073_792, main_decoder=16_296, aux_decoders=488_880,
      total=47_210_776)


def test_torchvision_stem_trunk_matches_torchvision_resnet50_without_fc():
  config = defaults.base_config()
  config.model.stem = 'torchvision'
  assert summary.parameter_counts(config)['trunk'] == 25_557_032 - 2_049_000


def test_stacked_aux_decoders_equal_separate_decoders_and_get_own_keys():
  model = tiny_model(aux_counts=dict(feature_noise=3))
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  variables = jax.jit(lambda k: cct.init_variables(model, k, x.shape))(jax.random.key(1))
  noise = lambda z, key, main_prediction, decode: z + jax.random.normal(key, z.shape)

  def run(v, x, one_at_a_time):
    main, aux = model.apply(v, x, perturbations=dict(feature_noise=noise), key=jax.random.key(2))
    stack = aux['feature_noise'].replace(one_at_a_time=one_at_a_time)
    return main, stack.map(lambda logits: (logits, jnp.mean(logits)))

  main, ((logits, means), sizes) = jax.jit(run, static_argnums=2)(variables, x, False)
  assert logits.shape == (3, 2, 2 * 2, 8 * 8, 5) and sizes.shape == (3, 2)  # sub-pixel order
  np.testing.assert_allclose(means, jnp.mean(logits, axis=(1, 2, 3, 4)), rtol=1e-5)

  z = jax.jit(lambda v, x: model.apply(v, x, method=lambda m, x: m.encoder(x)))(variables, x)
  stack = variables['params']['aux_decoders']['feature_noise']['decoders']
  type_key = cct.perturbation_type_key(jax.random.key(2), 'feature_noise')
  decoder = decoders.Decoder(5)
  for k, decoder_key in enumerate(jax.random.split(type_key, 3)):
    params = jax.tree.map(lambda a: a[k], stack)
    z_tilde = noise(z, decoder_key, None, None)
    expected = losses.sub_pixel_order(decoder.apply({'params': params}, z_tilde), 3)
    np.testing.assert_allclose(logits[k], expected, rtol=1e-5, atol=1e-5)
    # The size of each perturbation, for the log.
    np.testing.assert_allclose(sizes[k], np.linalg.norm(np.asarray(z_tilde - z).reshape(2, -1),
                                                        axis=1), rtol=1e-5)
  assert not np.allclose(logits[0], logits[1])
  assert main.shape == (2, 16, 16, 5)
  # One at a time (model.remat 'decoders'): the same values.
  _, ((looped, _), looped_sizes) = jax.jit(run, static_argnums=2)(variables, x, True)
  np.testing.assert_allclose(looped, logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(looped_sizes, sizes, rtol=1e-5)


def test_decoder_width_widens_every_block_but_the_last():
  z = jnp.zeros((1, 4, 4, 16))
  shapes = lambda width: jax.tree.map(jnp.shape, decoders.Decoder(5, 2, width=width).init(
      jax.random.key(0), z)['params'])
  paper = shapes(0)  # the paper's: the class count throughout
  assert paper['conv_in']['kernel'] == (16, 5)
  assert paper['upsample_0']['kernel'] == (5, 20) and paper['upsample_1']['kernel'] == (5, 20)
  wide = shapes(32)
  assert wide['conv_in']['kernel'] == (16, 32)
  assert wide['upsample_0']['kernel'] == (32, 128)
  assert wide['upsample_1']['kernel'] == (32, 20)  # 4 x 5 classes before the last shuffle
  logits = decoders.Decoder(5, 2, width=32).init_with_output(jax.random.key(0), z)[0]
  assert logits.shape == (1, 16, 16, 5)


@pytest.mark.parametrize('kernel,stride,padding,dilation', [
    (1, 1, ((0, 0), (0, 0)), 1), (3, 2, ((1, 1), (1, 1)), 1), (3, 1, ((4, 4), (4, 4)), 4),
    (7, 2, ((3, 3), (3, 3)), 1), (3, 2, 'SAME', 1), (3, 1, ((0, 2), (1, 0)), 2),
    (3, 1, ((0, 2), (2, 0)), 1)])  # stride 1, same size, 6 -> 5: the output gradient shifts
@pytest.mark.parametrize('in_features_per_slice', [512, 4])  # 4: 6 channels as 4 + 2
def test_cpu_conv_equals_lax(kernel, stride, padding, dilation, in_features_per_slice,
                             monkeypatch):
  monkeypatch.setattr(cpu_conv, 'IN_FEATURES_PER_SLICE', in_features_per_slice)
  x = jax.random.normal(jax.random.key(0), (2, 13, 11, 6))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 6, 5))
  numbers = ('NHWC', 'HWIO', 'NHWC')

  def apply(conv, x, w):
    return conv(x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation),
                dimension_numbers=numbers)

  def loss(conv, x, w):
    return jnp.sum(jnp.sin(apply(conv, x, w)))  # a non-uniform output gradient

  np.testing.assert_allclose(apply(cpu_conv.conv_general_dilated, x, w),
                             apply(jax.lax.conv_general_dilated, x, w), rtol=1e-4, atol=1e-4)
  expected = jax.grad(functools.partial(loss, jax.lax.conv_general_dilated), (0, 1))(x, w)
  got = jax.grad(functools.partial(loss, cpu_conv.conv_general_dilated), (0, 1))(x, w)
  for e, g in zip(expected, got):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
  # Under vmap (the stacked auxiliary decoders' way) and jit alike.
  batched = jax.jit(jax.vmap(jax.grad(functools.partial(loss, cpu_conv.conv_general_dilated),
                                      1), (None, 0)))(x, jnp.stack([w, 2 * w]))
  np.testing.assert_allclose(batched[0], expected[1], rtol=1e-4, atol=1e-4)


def test_cpu_conv_setting_gives_the_trunk_and_psp_their_convolution():
  assert models.convolution_from_config('auto') is cpu_conv.conv_general_dilated  # a CPU
  assert models.convolution_from_config('on') is cpu_conv.conv_general_dilated
  assert models.convolution_from_config('off') is jax.lax.conv_general_dilated
  with pytest.raises(ValueError, match=r"model.cpu_conv must be one of .*'yes'"):
    models.convolution_from_config('yes')
  calls = []

  def counting_convolution(*args, **kwargs):
    calls.append(args[1].shape)
    return jax.lax.conv_general_dilated(*args, **kwargs)

  encoder = cct.Encoder(stage_sizes=(1, 1, 1, 1), width=4, psp_features=8,
                        convolution=counting_convolution)
  variables = jax.eval_shape(encoder.init, jax.random.key(0),
                             jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  flat = traverse_util.flatten_dict(variables['params'])
  kernels = [leaf.shape for path, leaf in flat.items() if path[-1] == 'kernel']
  assert sorted(calls) == sorted(kernels) and len(kernels) == 24  # 19 trunk + 5 PSP


def _check_initialisation(params, draws: int = 0) -> dict[str, float]:
  """Every layer of `params` (`draws` > 0: that many initialisations stacked in front)
  against PyTorch's initialisation of it as the authors' code leaves it; returns the
  expected std of each kernel and bias checked.

  Convolutions and linear layers by default: kaiming_uniform with a = sqrt(5), i.e.
  U(+-1/sqrt(fan_in)), std = bound / sqrt(3); biases U(+-1/sqrt(fan_in)). The authors'
  decoders (models/decoders.py of github.com/yassouali/CCT): the 1x1 projection
  kaiming_normal_ (std sqrt(2 / fan_in)), the pixel-shuffle convs ICNR of kaiming_normal_
  sub-kernels, default biases. BatchNorm: scale 1, offset 0.
  """
  layers = {}
  for path, leaf in traverse_util.flatten_dict(params).items():
    layers.setdefault('/'.join(path[:-1]), {})[path[-1]] = np.asarray(leaf)
  checked = {}
  for layer, leaves in layers.items():
    if 'scale' in leaves:  # BatchNorm
      assert np.all(leaves['scale'] == 1) and np.all(leaves['bias'] == 0), layer
      continue
    fan_in = int(np.prod(leaves['kernel'].shape[draws:-1]))
    name = layer.split('/')[-1]
    for kind, values in leaves.items():
      normal = kind == 'kernel' and (name == 'conv_in' or name.startswith('upsample'))
      std = (2 / fan_in)**0.5 if normal else (1 / fan_in)**0.5 / 3**0.5
      assert abs(values.std() / std - 1) < 0.1, (layer, kind, values.std(), std)
      assert abs(values.mean()) < 0.2 * std, (layer, kind)
      if not normal:
        assert np.abs(values).max() <= (1 / fan_in)**0.5, (layer, kind)
      checked[f'{layer}/{kind}'] = std
  return checked


def test_psp_starts_as_pytorch_default_convolutions():
  params = jax.jit(lambda k: psp.PSP().init(k, jnp.zeros((1, 6, 6, 2048)))['params'])(
      jax.random.key(0))
  checked = _check_initialisation(params)
  assert len(checked) == 5  # four bins' 1x1 and the 3x3 bottleneck; BN checked apart
  # 1x1 2048 -> 512 and 3x3 4096 -> 512 (the trunk's He fan-out gave 0.0625 and 0.0208).
  assert checked['stage0_conv/kernel'] == pytest.approx(0.01276, rel=1e-3)
  assert checked['bottleneck_conv/kernel'] == pytest.approx(0.003007, rel=1e-3)


def test_decoders_classifier_and_discriminator_start_as_the_authors_code():
  keys = jax.random.split(jax.random.key(1), 16)  # 16 draws: enough values in every bias
  z = jnp.zeros((1, 2, 2, 512))
  decoder = jax.jit(jax.vmap(lambda k: decoders.Decoder(21).init(k, z)['params']))(keys)
  checked = _check_initialisation(decoder, draws=1)
  assert set(checked) == {'conv_in/kernel', *(f'upsample_{i}/{p}' for i in range(3)
                                              for p in ('kernel', 'bias'))}
  # ICNR: the four outputs of a pixel-shuffle group start equal.
  groups = np.asarray(decoder['upsample_0']['kernel']).reshape(16, 21, 21, 4)
  np.testing.assert_array_equal(groups, np.repeat(groups[..., :1], 4, axis=-1))

  classifier = models.Classifier(20, encoder=cct.Encoder(stage_sizes=(1, 1, 1, 1), width=4,
                                                         psp_features=64))
  head = jax.jit(jax.vmap(lambda k: classifier.init(k, jnp.zeros((1, 16, 16, 3)))[
      'params']['classifier']))(keys)
  assert set(_check_initialisation({'classifier': head}, draws=1)) == {
      'classifier/kernel', 'classifier/bias'}

  # Narrower than Table 8's and 128 draws: enough values in the 2-logit classifier's bias.
  critic = discriminator.Discriminator(num_domains=2, features=(16, 16, 16, 16))
  critic_params = jax.jit(jax.vmap(lambda k: critic.init(k, z[..., :32])['params']))(
      jax.random.split(keys[0], 128))
  assert len(_check_initialisation(critic_params, draws=1)) == 10  # 5 convs, kernel + bias
