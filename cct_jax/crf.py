"""Fully connected CRF (Krahenbuhl & Koltun 2011) with mean-field inference on the device.

Refines pseudo-labels (paper sec. 3.3): a Potts model whose pairwise energy is a
Gaussian kernel over positions plus a bilateral kernel over positions and colours. Each
mean-field step filters the current marginals Q with both kernels, which the
permutohedral lattice (Adams et al. 2010) makes linear in the number of pixels:

- Lattice (host, NumPy, once per image; the positions-only one once per image size):
  every pixel's feature vector f (positions / sxy, and colours / srgb for the bilateral
  kernel) is lifted onto the plane sum = 0 of R^(d+1), which the lattice tiles with
  simplices. A pixel splats to the d+1 vertices of its simplex with barycentric weights;
  each vertex has two neighbours along each of the d+1 lattice directions.
- Filtering (device, JAX): splat (scatter-add of weight x value onto the vertices), blur
  (a [1/2, 1, 1/2] pass along each direction in turn: gathers), slice (gather and
  weighted sum back at the pixels). Together they approximate exp(-|f_i - f_j|^2 / 2).

The conventions are pydensecrf's (its C++ densecrf/src), so labels agree with it:
symmetric kernel normalisation, Potts compatibility as a positive weight on the message,
Q = softmax(-unary + sum_k w_k K_k Q) from Q = softmax(-unary), kernels including i = j.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cct_jax import errors
from cct_jax.labels import IGNORE_INDEX


def default_crf_config() -> ml_collections.ConfigDict:
  """The CRF of the paper's weak-label path (sec. 3.3; settings of issue 11)."""
  return ml_collections.ConfigDict(dict(
      iterations=10,
      gt_prob=0.7,  # unary_from_labels: the probability given to the pseudo-label's class
      gaussian=dict(sxy=3.0, compat=3.0),
      bilateral=dict(sxy=50.0, srgb=5.0, compat=10.0),
  ))


class Lattice(NamedTuple):
  """A permutohedral lattice over N pixels with d-dimensional features, as device arrays.

  Vertex rows beyond the lattice's own points are zero padding (see `_padded_size`); a
  missing neighbour points at the first of them, which stays zero through every blur.
  """
  vertices: jax.Array  # (N, d + 1) int32: the vertices each pixel splats to
  weights: jax.Array  # (N, d + 1) float32: its barycentric weights (sum 1)
  neighbours: jax.Array  # (d + 1, 2, P) int32: each vertex's two neighbours per direction


def _padded_size(n: int) -> int:
  """n rounded up to k * 2^e with 8 <= k < 16.

  The number of lattice points depends on the image; rounding it up wastes at most 1/8
  of the blur but lets images of one size share a few compiled programs.
  """
  step = 2 ** max(n.bit_length() - 4, 0)
  return -(-n // step) * step


def _elevate(features: np.ndarray) -> np.ndarray:
  """(N, d) features -> (N, d + 1) points on the plane sum = 0, scaled so that the blur
  approximates a Gaussian of standard deviation 1 in feature space (Adams et al., p. 5-6)."""
  d = features.shape[1]
  i = np.arange(1, d + 1, dtype=np.float32)
  scale = (np.sqrt(2.0 / 3.0) * (d + 1) / np.sqrt(i * (i + 1))).astype(np.float32)
  scaled = features * scale
  # elevated_j = sum_{k > j} scaled_k - j * scaled_j (1-based), elevated_0 = sum_k scaled_k.
  tail_sums = np.cumsum(scaled[:, ::-1], axis=1, dtype=np.float32)[:, ::-1]
  tail_sums = np.concatenate([tail_sums, np.zeros_like(tail_sums[:, :1])], axis=1)
  elevated = tail_sums.copy()
  elevated[:, 1:] -= i * scaled
  return elevated


def _enclosing_simplex(elevated: np.ndarray):
  """The nearest remainder-0 lattice point, and each coordinate's rank in the simplex.

  Returns rem0 (N, d + 1) int32, rank (N, d + 1) int32 (0 = largest offset from rem0;
  ties go to the lower index) and the barycentric weights (N, d + 1) float32.
  """
  d1 = elevated.shape[1]
  down = np.float32(1.0 / d1)
  rounded = np.rint(elevated * down)  # ties to even, as the SSE build of pydensecrf
  rem0 = rounded * np.float32(d1)
  offset = elevated - rem0
  index = np.arange(d1)
  later = index[None, :] > index[:, None]  # [i, j]: j comes after i
  greater = np.where(later, offset[:, :, None] < offset[:, None, :],
                     offset[:, :, None] <= offset[:, None, :])
  greater &= index[None, :] != index[:, None]
  rank = (greater.sum(axis=2, dtype=np.int32)
          + rounded.sum(axis=1, keepdims=True).astype(np.int32))
  # rem0's coordinates may sum to k (d + 1) != 0: shifting every rank by k and wrapping
  # the ones that leave 0..d moves rem0 back onto the plane.
  wrap = np.where(rank < 0, d1, 0) - np.where(rank >= d1, d1, 0)
  rank += wrap
  rem0 += wrap
  # Each coordinate adds its scaled offset at position d - rank and removes it at the next;
  # the positions are a permutation, so each update is a plain assignment.
  delta = (elevated - rem0) * down
  added, removed = (np.zeros((len(elevated), d1 + 1), np.float32) for _ in range(2))
  np.put_along_axis(added, d1 - 1 - rank, delta, axis=1)
  np.put_along_axis(removed, d1 - rank, delta, axis=1)
  barycentric = added - removed
  barycentric[:, 0] += 1.0 + barycentric[:, d1]
  return rem0.astype(np.int32), rank.astype(np.int32), barycentric[:, :d1]


def _vertex_codes(offsets: np.ndarray, rank: np.ndarray, strides: np.ndarray) -> np.ndarray:
  """Packed keys (N, d + 1) of the vertices of each pixel's simplex, from the packing's
  offsets (N, d) of rem0 and its strides (d,); a key is a point's first d coordinates
  (the last follows from sum = 0).

  Vertex 0 is rem0; vertex r + 1 is vertex r plus 1 in every coordinate and minus d + 1
  in the coordinate of rank d - r (Adams et al.'s canonical simplex, shifted).
  """
  num_pixels, d1 = rank.shape
  coordinate_of_rank = np.empty_like(rank)
  np.put_along_axis(coordinate_of_rank, rank, np.arange(d1, dtype=rank.dtype)[None], axis=1)
  strides = np.append(strides, 0)  # the implied last coordinate is not packed
  steps = strides.sum() - d1 * strides[coordinate_of_rank[:, :0:-1]]  # ranks d .. 1
  first = offsets @ strides[:-1]
  return first[:, None] + np.concatenate(
      [np.zeros((num_pixels, 1), np.int64), np.cumsum(steps, axis=1)], axis=1)


def build_lattice(features: np.ndarray) -> Lattice:
  """The permutohedral lattice of (N, d) float32 features, built on the host."""
  features = np.asarray(features, np.float32)
  num_pixels, d = features.shape
  rem0, rank, weights = _enclosing_simplex(_elevate(features))
  # Keys are packed into one int64 each (mixed radix). Vertices lie within d + 1 of rem0
  # in every coordinate and their neighbours within 2 (d + 1): room for both.
  low = rem0[:, :d].min(axis=0).astype(np.int64) - 2 * (d + 1)
  radix = rem0[:, :d].max(axis=0) - low + 2 * (d + 1) + 1
  if np.sum(np.log2(radix.astype(np.float64))) >= 62:
    raise ValueError(f'CRF features span too large a lattice (per-axis extent {radix}); '
                     'use larger sxy / srgb or a smaller image')
  strides = np.cumprod(np.concatenate([[1], radix[:-1]]))
  points, vertices = np.unique(_vertex_codes(rem0[:, :d] - low, rank, strides),
                               return_inverse=True)
  num_points = len(points)
  padded = _padded_size(num_points + 1)
  # Along direction j a neighbour differs by -1 in every coordinate and +d in coordinate j
  # (the other one by the opposite); direction d touches only the implicit last coordinate.
  steps = np.where(np.eye(d + 1, d, dtype=bool), d, -1) @ strides
  neighbours = np.full((d + 1, 2, padded), num_points, np.int32)
  for j, step in enumerate(steps):
    for side, code in enumerate((points + step, points - step)):
      found = np.minimum(np.searchsorted(points, code), num_points - 1)
      neighbours[j, side, :num_points] = np.where(points[found] == code, found, num_points)
  return Lattice(vertices=jnp.asarray(vertices.reshape(num_pixels, d + 1), jnp.int32),
                 weights=jnp.asarray(weights),
                 neighbours=jnp.asarray(neighbours))


def lattice_filter(lattice: Lattice, values: jax.Array) -> jax.Array:
  """Approximately sum_j exp(-|f_i - f_j|^2 / 2) values_j for (N, C) values: splat, blur
  along each lattice direction in turn, slice."""
  d1 = lattice.vertices.shape[1]
  num_points = lattice.neighbours.shape[2]
  splat = jnp.zeros((num_points, values.shape[1]), values.dtype).at[lattice.vertices].add(
      lattice.weights[..., None] * values[:, None, :])
  for before, after in lattice.neighbours:
    # The barrier keeps each pass a stored array: fused into the next gather (as XLA
    # does), a pass is recomputed for every reader, several times slower on a CPU.
    splat = jax.lax.optimization_barrier(splat + 0.5 * (splat[before] + splat[after]))
  # The scale pydensecrf (after Adams et al.'s code) gives the result.
  alpha = 1.0 / (1.0 + 2.0 ** -(d1 - 1))
  return alpha * jnp.einsum('nk,nkc->nc', lattice.weights, splat[lattice.vertices])


def _symmetric_norm(lattice: Lattice) -> jax.Array:
  """(N, 1) 1 / sqrt(K 1): the filter becomes D^-1/2 K D^-1/2 (pydensecrf's default)."""
  ones = jnp.ones((lattice.vertices.shape[0], 1), jnp.float32)
  return jax.lax.rsqrt(lattice_filter(lattice, ones) + 1e-20)


@jax.jit(static_argnames='iterations')
def _mean_field(unary: jax.Array, lattices: tuple[Lattice, ...], compats: jax.Array,
                iterations: int) -> jax.Array:
  """Marginals (N, M, C) after `iterations` mean-field updates from (N, M, C) unary
  energies: M CRFs on one image, filtered together (the filter is linear per channel)."""
  norms = [_symmetric_norm(lattice) for lattice in lattices]

  def update(_, q):
    flat = q.reshape(q.shape[0], -1)
    message = sum(compat * norm * lattice_filter(lattice, norm * flat)
                  for lattice, norm, compat in zip(lattices, norms, compats))
    return jax.nn.softmax(message.reshape(q.shape) - unary, axis=-1)

  return jax.lax.fori_loop(0, iterations, update, jax.nn.softmax(-unary, axis=-1))


def _position_features(height: int, width: int, sxy: float) -> np.ndarray:
  """(H * W, 2) float32: x / sxy, y / sxy, pixels in row-major order."""
  y, x = np.mgrid[:height, :width].astype(np.float32)
  return np.stack([x.reshape(-1), y.reshape(-1)], axis=1) / np.float32(sxy)


@functools.lru_cache(maxsize=4)
def _position_lattice(height: int, width: int, sxy: float) -> Lattice:
  """The Gaussian kernel's lattice, shared by all images of one size (a dataset's
  images mostly have a few sizes)."""
  return build_lattice(_position_features(height, width, sxy))


def _bilateral_lattice(image: np.ndarray, sxy: float, srgb: float) -> Lattice:
  height, width, channels = image.shape
  colours = image.reshape(-1, channels).astype(np.float32) / np.float32(srgb)
  return build_lattice(np.concatenate([_position_features(height, width, sxy), colours],
                                      axis=1))


def _check_config(config: ml_collections.ConfigDict):
  for name in ('gaussian.sxy', 'bilateral.sxy', 'bilateral.srgb'):
    section, key = name.split('.')
    if not config[section][key] > 0:
      raise errors.UserError(f'crf config {name} must be > 0, got {config[section][key]}')
  if config.iterations < 0:
    raise errors.UserError(f'crf config iterations must be >= 0, got {config.iterations}')


def dense_crf(image, unary, config: ml_collections.ConfigDict) -> jax.Array:
  """Marginals (..., H, W, C) float32 of the CRF on a uint8 (H, W, 3) image, given unary
  energies (negative log-probabilities) (..., H, W, C): each leading index its own CRF,
  all sharing the image's lattices."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f'dense_crf needs a uint8 (H, W, 3) image, got {image.dtype} '
                     f'{image.shape}')
  height, width, _ = image.shape
  if unary.ndim < 3 or unary.shape[-3:-1] != (height, width):
    raise ValueError(f'unary of shape {unary.shape} does not match the image '
                     f'{image.shape}: expected (..., {height}, {width}, C)')
  _check_config(config)
  lattices = (_position_lattice(height, width, float(config.gaussian.sxy)),
              _bilateral_lattice(image, config.bilateral.sxy, config.bilateral.srgb))
  compats = jnp.asarray([config.gaussian.compat, config.bilateral.compat], jnp.float32)
  per_pixel = jnp.asarray(unary, jnp.float32).reshape(-1, height * width, unary.shape[-1])
  marginals = _mean_field(per_pixel.transpose(1, 0, 2), lattices, compats,
                          iterations=config.iterations)
  return marginals.transpose(1, 0, 2).reshape(unary.shape)


def unary_from_labels(labels, num_classes: int, gt_prob: float) -> np.ndarray:
  """Unary energies (H, W, C) float32 of a label map: -log gt_prob for the label, the rest
  of the probability spread evenly over the other classes, uniform where the label is 255
  (unsure). pydensecrf's `unary_from_labels` with 255 in place of its 0 as unsure."""
  labels = np.asarray(labels)
  if not 0 < gt_prob < 1:
    raise ValueError(f'gt_prob must be in (0, 1), got {gt_prob}')
  if num_classes < 2:
    raise ValueError(f'unary_from_labels needs num_classes >= 2, got {num_classes}')
  unsure = labels == IGNORE_INDEX
  bad = np.unique(labels[~unsure & ((labels < 0) | (labels >= num_classes))])
  if bad.size:
    raise ValueError(f'labels {bad.tolist()} are outside 0..{num_classes - 1} '
                     f'(and not {IGNORE_INDEX}, unsure)')
  other = -np.log((1.0 - gt_prob) / (num_classes - 1))
  unary = np.where(np.arange(num_classes) == labels[..., None], -np.log(gt_prob), other)
  unary[unsure] = np.log(num_classes)
  return unary.astype(np.float32)


def refine_labels(image, labels, num_classes: int,
                  config: ml_collections.ConfigDict) -> jax.Array:
  """The CRF's labels (H, W) int32 for a label map (255 = unsure) on its image."""
  unary = unary_from_labels(labels, num_classes, config.gt_prob)
  return jnp.argmax(dense_crf(image, unary, config), axis=-1).astype(jnp.int32)


def refine_among(image, label_maps, classes, config: ml_collections.ConfigDict) -> np.ndarray:
  """The CRF's labels (M, H, W) int32 for label maps (M, H, W) on one image, each CRF over
  `classes` alone (class ids; every label must be one of them, none unsure).

  IRN's `crf_inference_label` (github.com/jiwoon-ahn/irn, misc/imutils.py), which made the
  authors' pseudo-labels (github.com/yassouali/CCT, pseudo_labels/): the CRF of an image
  runs over its present classes plus background, so it cannot move a pixel to a class the
  image does not contain.
  """
  classes = np.asarray(classes, np.int32)
  label_maps = np.asarray(label_maps)
  outside = ~np.isin(label_maps, classes)
  if np.any(outside):
    raise ValueError(f'labels {np.unique(label_maps[outside]).tolist()} are not among '
                     f'the classes {classes.tolist()}')
  order = np.argsort(classes)
  local = order[np.searchsorted(classes[order], label_maps)]
  if len(classes) == 1:  # nothing to decide (and no CRF over one label)
    return np.full(label_maps.shape, classes[0], np.int32)
  unary = np.stack([unary_from_labels(m, len(classes), config.gt_prob) for m in local])
  return classes[np.argmax(np.asarray(dense_crf(image, unary, config)), axis=-1)]
