"""Evaluation (SPEC 4, App. F): the confusion-matrix scores and the inference variants."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cct_jax import evaluate


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


def pointwise_logits(images):
  """A per-pixel classifier: any window, scale or flip of it predicts the same pixels."""
  return jnp.stack([images[..., 0], -images[..., 0], images[..., 1]], axis=-1)


def test_whole_image_is_padded_to_a_multiple_of_eight_and_cropped_back():
  seen = []
  images = jax.random.normal(jax.random.key(0), (2, 21, 30, 3))
  probs = evaluate.whole_image_probs(lambda x: seen.append(x.shape) or pointwise_logits(x),
                                     images)
  assert seen == [(2, 24, 32, 3)]
  np.testing.assert_allclose(probs, jax.nn.softmax(pointwise_logits(images)), rtol=1e-6)


def test_sliding_window_covers_every_pixel_and_agrees_with_the_whole_image():
  images = jax.random.normal(jax.random.key(1), (1, 50, 37, 3))
  windows = evaluate.sliding_window_probs(pointwise_logits, images, crop=16)
  np.testing.assert_allclose(windows, evaluate.whole_image_probs(pointwise_logits, images),
                             rtol=1e-5, atol=1e-6)


def test_multi_scale_and_flip_average_back_at_the_input_size():
  images = jnp.broadcast_to(jnp.array([0.3, -0.2, 0.5]), (1, 24, 40, 3))  # constant image
  cfg = ml_collections.ConfigDict(dict(scales=(0.5, 0.75, 1.0, 1.25, 1.5), flip=True,
                                       window=0))
  probs = evaluate.predict_probs(pointwise_logits, images, cfg)
  assert probs.shape == (1, 24, 40, 3)
  np.testing.assert_allclose(probs, evaluate.whole_image_probs(pointwise_logits, images),
                             rtol=1e-5)
  # A classifier that favours class 0 on the left: flip averaging makes it symmetric.
  def left_biased(x):
    column = jnp.broadcast_to(jnp.linspace(1.0, -1.0, x.shape[2]), x.shape[:3])
    return jnp.stack([column + x[..., 0], -column, jnp.zeros_like(column)], axis=-1)

  plain = evaluate.multi_scale_probs(left_biased, images, scales=(1.0,), flip=False)
  averaged = evaluate.multi_scale_probs(left_biased, images, scales=(1.0,), flip=True)
  assert not np.allclose(plain, plain[:, :, ::-1], atol=1e-3)
  np.testing.assert_allclose(averaged, averaged[:, :, ::-1], rtol=1e-5)
  np.testing.assert_allclose(averaged, (plain + plain[:, :, ::-1]) / 2, rtol=1e-5)
