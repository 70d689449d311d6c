"""Evaluation (paper App. F): the confusion-matrix scores, the inference variants, and
whole images of many sizes in a few compiled programs."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import fakes
from cct_jax import defaults, evaluate, models, segmentation
from cct_jax.data import factory
from cct_jax.models import cct

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_confusion_matrix_skips_ignored_pixels_and_invalid_examples():
  labels = jnp.array([[[0, 1, 255], [2, 2, 1]], [[1, 1, 1], [1, 1, 1]]])
  predictions = jnp.array([[[0, 2, 1], [2, 0, 1]], [[0, 0, 0], [0, 0, 0]]])
  confusion = evaluate.confusion_matrix(predictions, labels, 3, valid=jnp.array([True, False]))
  np.testing.assert_array_equal(confusion, [[1, 0, 0], [0, 1, 1], [1, 0, 1]])


def test_scores_are_iou_per_class_and_their_mean_over_occurring_classes():
  confusion = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
  results = evaluate.scores(confusion, ['a', 'b', 'c'])
  assert results['per_class_iou'] == {'a': 0.75, 'b': 2 / 3, 'c': None}
  assert np.isclose(results['miou'], (0.75 + 2 / 3) / 2)
  assert np.isclose(results['pixel_accuracy'], 5 / 6)


def pointwise_logits(images, sizes=None):
  """A per-pixel classifier: any window, scale or flip of it predicts the same pixels."""
  del sizes
  return jnp.stack([images[..., 0], -images[..., 0], images[..., 1]], axis=-1)


def test_whole_image_is_padded_to_a_multiple_of_eight_and_cropped_back():
  seen = []
  images = jax.random.normal(jax.random.key(0), (2, 21, 30, 3))
  probs = evaluate.whole_image_probs(
      lambda x, sizes: seen.append(x.shape) or pointwise_logits(x), images,
      evaluate.full_sizes(images))
  assert seen == [(2, 24, 32, 3)]
  np.testing.assert_allclose(probs, jax.nn.softmax(pointwise_logits(images)), rtol=1e-6)


def test_sliding_window_covers_every_pixel_and_agrees_with_the_whole_image():
  images = jax.random.normal(jax.random.key(1), (1, 50, 37, 3))
  sizes = evaluate.full_sizes(images)
  windows = evaluate.sliding_window_probs(pointwise_logits, images, sizes, crop=16)
  np.testing.assert_allclose(windows, evaluate.whole_image_probs(pointwise_logits, images, sizes),
                             rtol=1e-5, atol=1e-6)


def test_multi_scale_and_flip_average_back_at_the_input_size():
  images = jnp.broadcast_to(jnp.array([0.3, -0.2, 0.5]), (1, 24, 40, 3))  # constant image
  cfg = ml_collections.ConfigDict(dict(scales=(0.5, 0.75, 1.0, 1.25, 1.5), flip=True,
                                       window=0))
  probs = evaluate.predict_probs(pointwise_logits, images, cfg)
  assert probs.shape == (1, 24, 40, 3)
  sizes = evaluate.full_sizes(images)
  np.testing.assert_allclose(probs, evaluate.whole_image_probs(pointwise_logits, images, sizes),
                             rtol=1e-5)
  # A classifier that favours class 0 on the left: flip averaging makes it symmetric.
  def left_biased(x, sizes):
    del sizes
    column = jnp.broadcast_to(jnp.linspace(1.0, -1.0, x.shape[2]), x.shape[:3])
    return jnp.stack([column + x[..., 0], -column, jnp.zeros_like(column)], axis=-1)

  plain = evaluate.multi_scale_logits(left_biased, images, sizes, scales=(1.0,), flip=False)
  averaged = evaluate.multi_scale_logits(left_biased, images, sizes, scales=(1.0,), flip=True)
  assert not np.allclose(plain, plain[:, :, ::-1], atol=1e-3)
  np.testing.assert_allclose(averaged, averaged[:, :, ::-1], rtol=1e-5, atol=1e-6)
  # The logits are averaged, as the authors' inference.py does, not the probabilities.
  np.testing.assert_allclose(averaged, (plain + plain[:, :, ::-1]) / 2, rtol=1e-5, atol=1e-6)


def test_multi_scale_rescales_floors_resizes_back_with_aligned_corners_and_averages_logits():
  """One image, written out as the authors' inference.py computes it: floor(size x scale),
  bilinear with half-pixel centres (jax.image.resize), mirrored copies, the logits resized
  back with align_corners=True (the model's own `resize_logits`) and averaged."""
  image = jax.random.normal(jax.random.key(2), (1, 21, 30, 3))
  scales = (0.5, 0.75, 1.25)
  expected = 0.0
  for scale in scales:
    size = (int(21 * scale), int(30 * scale))  # 10 x 15, 15 x 22, 26 x 37
    scaled = jax.image.resize(image, (1, *size, 3), 'bilinear', antialias=False)
    for logits in (pointwise_logits(scaled), pointwise_logits(scaled[:, :, ::-1])[:, :, ::-1]):
      expected = expected + cct.resize_logits(logits, (21, 30)) / (2 * len(scales))
  logits = evaluate.multi_scale_logits(pointwise_logits, image, evaluate.full_sizes(image),
                                       scales, flip=True)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def _tiny_logits_fn(output_stride: int = 8):
  """The tiny network with random weights and every bias at 0.05 (see `_with_biases`)."""
  model_cfg = models.tiny_model_config(5)
  model_cfg.update(output_stride=output_stride, stem='torchvision', psp_bins=(1, 3))  # cheaper
  model = models.model_from_config(model_cfg)
  variables = jax.jit(lambda key: cct.init_variables(model, key, (1, 32, 32, 3)))(
      jax.random.key(0))
  variables = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.full_like(x, 0.05) if jax.tree_util.keystr(path).endswith(
          "'bias']") else x, variables)
  return lambda x, sizes: model.apply(variables, x, train=False, sizes=sizes)[0]


def _assert_each_image_as_alone(predict, sizes, canvas):
  """`predict(images, sizes)` of random images of `sizes` in one padded batch of `canvas`
  (and a blank row) against each image alone in a batch of its own size: logits within
  float32 rounding, argmax identical."""
  images = [np.asarray(jax.random.normal(jax.random.key(3 + i), (h, w, 3)))
            for i, (h, w) in enumerate(sizes)]
  batch = np.zeros((len(sizes) + 1, *canvas, 3), np.float32)
  for row, image in enumerate(images):
    batch[row, :image.shape[0], :image.shape[1]] = image
  batched = np.asarray(predict(batch, jnp.array(sizes + [(1, 1)], jnp.int32)))
  assert np.isfinite(batched).all()  # the blank row too
  for row, (image, (h, w)) in enumerate(zip(images, sizes)):
    alone = np.asarray(predict(image[None], evaluate.full_sizes(image[None])))[0]
    np.testing.assert_allclose(batched[row, :h, :w], alone, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(batched[row, :h, :w].argmax(-1), alone.argmax(-1))
    np.testing.assert_allclose(jax.nn.softmax(batched[row, :h, :w]), jax.nn.softmax(alone),
                               atol=1e-6)


def test_multi_scale_and_flip_in_a_padded_batch_give_each_image_what_it_gets_alone():
  """App. F's five scales and flip: each image of a padded 48 x 48 batch (and a blank row)
  against the image alone in a batch of its own size. Each is rescaled on its own to
  floor(size x scale), so at 0.75 the 41-row image has 30 rows in a 40-row canvas
  (alone: 32), and its prediction alone is resized back. Measured: logits 2.4e-7 apart at
  most; the canvas rescaled whole (before) gave probabilities 9.5e-3 and 1.4e-2 apart."""
  logits_fn = _tiny_logits_fn()
  eval_cfg = ml_collections.ConfigDict(dict(scales=(0.5, 0.75, 1.0, 1.25, 1.5), flip=True,
                                            window=0))
  predict = jax.jit(lambda x, sizes: evaluate.predict_logits(logits_fn, x, eval_cfg, sizes))
  _assert_each_image_as_alone(predict, [(41, 30), (27, 45)], (48, 48))


def test_output_stride_16_in_a_padded_batch_gives_each_image_what_it_gets_alone():
  """Whole images at output stride 16 in a 40 x 56 canvas, multiples of 8 but not of 16:
  z has ceil(56 / 16) = 4 columns (56 // 4 = 14 is no stride), the 45-column image alone
  3, and the decoders' x8 of each image's own region is resized to its size alone (here
  24 x 48), not the canvas's 24 x 32 to 40 x 56. Measured: logits 1.9e-7 apart at most;
  0.44 apart (argmax the same) with the stride as 56 // 4 and the canvas resized whole."""
  logits_fn = _tiny_logits_fn(output_stride=16)
  predict = jax.jit(lambda x, sizes: evaluate.whole_image_logits(logits_fn, x, sizes))
  _assert_each_image_as_alone(predict, [(33, 17), (21, 45)], (40, 56))


def test_flip_inside_mirrors_each_image_and_leaves_its_padding():
  x = jnp.arange(2 * 5, dtype=jnp.float32).reshape(2, 1, 5)
  flipped = evaluate.flip_inside(x, jnp.array([3, 5]))
  np.testing.assert_array_equal(flipped, [[[2, 1, 0, 3, 4]], [[9, 8, 7, 6, 5]]])


def _voc_smoke(root: str, **data):
  config = defaults.load_config_file(os.path.join(REPO, 'configs', 'voc.py'), 'smoke')
  config.data.update(root=root, **data)
  return config


def _with_biases(state, value: float):
  """Every bias and BN offset set to `value`: activations over zero padding are then no
  longer zero, so padding that leaked into an image's prediction would show."""
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.full_like(x, value) if jax.tree_util.keystr(path).endswith(
          ("'bias']",)) else x, state.params)
  return state.replace(params=params)


def test_many_image_sizes_compile_a_few_programs_and_score_as_one_image_at_a_time(tmp_path):
  """21 val images of 21 sizes in three groups (up to 48 x 64, 96 x 88, 120 x 112): canvases
  of 64, 96 and 120 at bucket 32, so 3 evaluation programs. Every image is predicted as
  alone (padded to a multiple of 8, as `whole_image_probs` does; three programs here too),
  so the confusion matrices agree pixel for pixel."""
  groups = [((41, 57), (48, 64)), ((89, 81), (96, 88)), ((113, 105), (120, 112))]
  sizes = [(low[0] + k, low[1] + (k * 3) % 7) for low, high in groups for k in range(7)]
  assert len(set(sizes)) == 21
  root = fakes.write_voc_folder(str(tmp_path), num_train=3, num_val=21,
                                sizes=sizes[-3:] + sizes)
  config = _voc_smoke(root, eval_bucket=32)
  task = segmentation.build(config)
  evaluator = segmentation.Evaluator(task)
  state = _with_biases(task.create_state(4), 0.05)
  scores, samples = evaluator.score(None, state, 'val', num_samples=30)
  assert evaluator.steps[None]._cache_size() == 3
  assert sorted(s.shape[:2] for s in samples['image']) == sorted(sizes)  # each once, cropped

  source = factory.make_source(config.data, 'val')
  transform = factory.eval_transform(config.data)
  predict = jax.jit(task.predict_fn(None))
  confusion = np.zeros((21, 21), np.int64)
  for index in range(len(source)):
    example = transform(source[index])
    h, w = example['mask'].shape
    image = np.pad(example['image'], ((0, -h % 8), (0, -w % 8), (0, 0)))
    labels = np.asarray(predict(state, image[None])[0, :h, :w].argmax(-1))
    keep = example['mask'] != evaluate.IGNORE_INDEX
    np.add.at(confusion, (example['mask'][keep], labels[keep]), 1)
  assert confusion.sum() > 20 * 40 * 40
  np.testing.assert_array_equal(scores['confusion_matrix'], confusion)
