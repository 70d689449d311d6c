"""The dense CRF (issue 11, item 4): lattice pieces, agreement with pydensecrf2, and that it
cleans up noisy labels."""

import jax.numpy as jnp
import numpy as np
import pydensecrf.densecrf as pydensecrf
import pydensecrf.utils as pydensecrf_utils
import pytest
import skimage.data
import skimage.filters
import skimage.transform

from cct_jax import crf

NUM_CLASSES = 4


def _photo(name, size=(96, 128)):
  image = skimage.transform.resize(getattr(skimage.data, name)(), size, anti_aliasing=True)
  return np.round(255 * image).astype(np.uint8)


def _blocky_labels(image, block=16, unsure_fraction=0.2, seed=0):
  """A true-ish segmentation (grey-level multi-Otsu) coarsened to blocks, some blocks 255:
  what a CAM pseudo-label looks like."""
  grey = image.mean(axis=-1)
  classes = np.digitize(grey, skimage.filters.threshold_multiotsu(grey, NUM_CLASSES))
  blocks = classes[::block, ::block]
  blocks[np.random.default_rng(seed).random(blocks.shape) < unsure_fraction] = 255
  return np.kron(blocks, np.ones((block, block), blocks.dtype))[:image.shape[0],
                                                                :image.shape[1]]


def _pydensecrf_marginals(image, unary, config):
  height, width, num_classes = unary.shape
  model = pydensecrf.DenseCRF2D(width, height, num_classes)
  model.setUnaryEnergy(np.ascontiguousarray(unary.reshape(-1, num_classes).T))
  model.addPairwiseGaussian(sxy=config.gaussian.sxy, compat=config.gaussian.compat)
  model.addPairwiseBilateral(sxy=config.bilateral.sxy, srgb=config.bilateral.srgb,
                             rgbim=np.ascontiguousarray(image),
                             compat=config.bilateral.compat)
  return np.array(model.inference(config.iterations)).T.reshape(unary.shape)


def test_unary_from_labels_is_pydensecrfs_with_255_unsure():
  labels = np.array([[0, 1, 255], [3, 2, 255]])
  unary = crf.unary_from_labels(labels, NUM_CLASSES, 0.7)
  # pydensecrf marks unsure with 0 and shifts the classes up by one.
  shifted = np.where(labels == 255, 0, labels + 1)
  expected = pydensecrf_utils.unary_from_labels(shifted, NUM_CLASSES, 0.7, zero_unsure=True)
  assert unary.shape == (2, 3, NUM_CLASSES) and unary.dtype == np.float32
  np.testing.assert_allclose(unary.reshape(-1, NUM_CLASSES).T, expected, rtol=1e-6)
  np.testing.assert_allclose(np.exp(-unary).sum(-1), 1.0, rtol=1e-6)


def test_unary_from_labels_names_bad_labels():
  with pytest.raises(ValueError, match=r'labels \[4, 7\] are outside 0..3'):
    crf.unary_from_labels(np.array([[0, 4], [7, 255]]), NUM_CLASSES, 0.7)


def _simplex_vertices(rem0, rank):
  """(N, d + 1, d + 1): vertex r of each simplex is rem0 + r, minus d + 1 in the
  coordinates of rank > d - r (Adams et al. 2010, sec. 3.1)."""
  d1 = rank.shape[1]
  r = np.arange(d1)[None, :, None]
  return rem0[:, None, :] + r - d1 * (rank[:, None, :] > d1 - 1 - r)


@pytest.mark.parametrize('d', [2, 5])
def test_simplex_weights_are_barycentric(d):
  """Each pixel's weights are non-negative, sum to 1, and rebuild its elevated feature
  from the d + 1 lattice points it splats to."""
  features = np.random.default_rng(d).uniform(0, 20, (500, d)).astype(np.float32)
  elevated = crf._elevate(features)
  np.testing.assert_allclose(elevated.sum(axis=1), 0.0, atol=1e-3)
  rem0, rank, weights = crf._enclosing_simplex(elevated)
  vertices = _simplex_vertices(rem0, rank)
  assert (vertices.sum(axis=2) == 0).all()
  assert (np.ptp(vertices % (d + 1), axis=2) == 0).all()  # lattice points
  assert weights.min() >= 0.0
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.einsum('nr,nrk->nk', weights, vertices), elevated,
                             atol=1e-3)


@pytest.mark.parametrize('d', [2, 5])
def test_lattice_points_and_neighbours(d):
  """build_lattice's vertex indices name the simplex vertices one to one, and the
  neighbours along direction j are the points +-(1, .., 1, -d, 1, .., 1) away."""
  features = np.random.default_rng(d).uniform(0, 6, (300, d)).astype(np.float32)
  rem0, rank, _ = crf._enclosing_simplex(crf._elevate(features))
  keys = _simplex_vertices(rem0, rank).reshape(-1, d + 1)
  lattice = crf.build_lattice(features)
  index = np.asarray(lattice.vertices).reshape(-1)
  num_points = index.max() + 1
  point_keys = np.zeros((num_points, d + 1), keys.dtype)
  point_keys[index] = keys
  np.testing.assert_array_equal(point_keys[index], keys)  # one key per index
  assert len(np.unique(point_keys, axis=0)) == num_points  # one index per key
  lookup = {tuple(key): i for i, key in enumerate(point_keys)}
  neighbours = np.asarray(lattice.neighbours)
  for j in range(d + 1):
    step = np.where(np.arange(d + 1) == j, d, -1)
    for side, sign in enumerate((1, -1)):
      expected = [lookup.get(tuple(key + sign * step), num_points) for key in point_keys]
      np.testing.assert_array_equal(neighbours[j, side, :num_points], expected)
  assert (neighbours[:, :, num_points:] == num_points).all()  # padding stays zero


def test_lattice_filter_approximates_the_gaussian():
  """Normalised filtering of a smooth signal matches exact Gaussian filtering in 2-D."""
  features = np.random.default_rng(0).uniform(0, 4, (400, 2)).astype(np.float32)
  signal = np.sin(features[:, 0]) + 0.3 * features[:, 1]
  values = np.stack([np.ones_like(signal), signal], axis=1)
  filtered = np.asarray(crf.lattice_filter(crf.build_lattice(features), jnp.asarray(values)))
  kernel = np.exp(-0.5 * np.sum((features[:, None] - features[None]) ** 2, axis=-1))
  exact = kernel @ values
  error = np.abs(filtered[:, 1] / filtered[:, 0] - exact[:, 1] / exact[:, 0])
  assert error.max() < 0.1 * signal.std()
  # Splat, blur and slice carry 80-92% of the exact Gaussian's mass (pydensecrf's scale).
  ratio = filtered[:, 0] / exact[:, 0]
  assert 0.7 < ratio.min() and ratio.max() < 1.0


@pytest.mark.parametrize('photo', ['astronaut', 'coffee'])
def test_agrees_with_pydensecrf_on_a_photo(photo):
  image = _photo(photo)
  labels = _blocky_labels(image)
  config = crf.default_crf_config()
  unary = crf.unary_from_labels(labels, NUM_CLASSES, config.gt_prob)
  ours = np.asarray(crf.dense_crf(image, unary, config))
  reference = _pydensecrf_marginals(image, unary, config)
  agreement = np.mean(ours.argmax(-1) == reference.argmax(-1))
  assert agreement >= 0.999, f'{photo}: {agreement:.5f} of labels agree'
  np.testing.assert_allclose(ours, reference, atol=1e-3)
  # Not a trivial agreement: the CRF moved a good share of the sure pixels' labels.
  sure = labels != 255
  assert np.mean(reference.argmax(-1)[sure] != labels[sure]) > 0.05


def test_refine_labels_cleans_up_noisy_labels():
  """Flat colour regions plus noise, labels with 30% of pixels flipped at random: the CRF
  brings them back to the regions."""
  rng = np.random.default_rng(0)
  y, x = np.mgrid[:64, :64]
  truth = np.where(x < 24, 0, 1)
  truth[(y - 40) ** 2 + (x - 40) ** 2 < 15 ** 2] = 2
  colours = np.array([[200, 40, 40], [40, 160, 60], [50, 60, 210]])
  image = np.clip(colours[truth] + rng.normal(0, 12, truth.shape + (3,)), 0, 255)
  noisy = np.where(rng.random(truth.shape) < 0.3, rng.integers(0, 3, truth.shape), truth)
  refined = np.asarray(crf.refine_labels(image.astype(np.uint8), noisy, 3,
                                         crf.default_crf_config()))
  assert refined.shape == truth.shape and refined.dtype == np.int32
  noisy_accuracy, refined_accuracy = np.mean(noisy == truth), np.mean(refined == truth)
  assert noisy_accuracy < 0.85 and refined_accuracy > 0.97, (noisy_accuracy,
                                                              refined_accuracy)


def test_dense_crf_rejects_bad_inputs():
  config = crf.default_crf_config()
  unary = np.zeros((8, 8, 2), np.float32)
  with pytest.raises(ValueError, match='uint8'):
    crf.dense_crf(np.zeros((8, 8, 3), np.float32), unary, config)
  with pytest.raises(ValueError, match=r'does not match the image'):
    crf.dense_crf(np.zeros((8, 9, 3), np.uint8), unary, config)
  config.bilateral.srgb = 0
  with pytest.raises(ValueError, match='bilateral.srgb'):
    crf.dense_crf(np.zeros((8, 8, 3), np.uint8), unary, config)


def test_crfs_of_one_image_run_together_as_they_would_alone():
  image = _photo('coffee', size=(48, 64))
  config = crf.default_crf_config()
  unaries = np.stack([crf.unary_from_labels(_blocky_labels(image, seed=seed), NUM_CLASSES,
                                            config.gt_prob) for seed in (0, 1)])
  together = np.asarray(crf.dense_crf(image, unaries, config))
  for unary, marginals in zip(unaries, together):
    np.testing.assert_allclose(marginals, crf.dense_crf(image, unary, config), atol=1e-6)


def test_refine_among_runs_the_crf_over_the_given_classes_alone():
  image = _photo('astronaut', size=(48, 64))
  config = crf.default_crf_config()
  local = np.where(_blocky_labels(image, unsure_fraction=0) % 2 == 0, 0, 1)
  classes = np.array([15, 0])  # an image's present class and background, in IRN's order
  maps = np.stack([classes[local], classes[1 - local]])
  refined = crf.refine_among(image, maps, classes, config)
  for label_map, got in zip([local, 1 - local], refined):
    alone = np.asarray(crf.refine_labels(image, label_map, 2, config))
    np.testing.assert_array_equal(got, classes[alone])
  assert refined.dtype == np.int32 and set(np.unique(refined)) <= {0, 15}
  np.testing.assert_array_equal(crf.refine_among(image, maps[:1] * 0, [0], config), 0)
  with pytest.raises(ValueError, match=r'labels \[15\] are not among the classes \[0, 3\]'):
    crf.refine_among(image, maps, [0, 3], config)
