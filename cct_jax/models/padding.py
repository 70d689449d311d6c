"""Images of different sizes in one batch, each predicted exactly as if alone.

A batch of differently sized images is padded at the bottom and right to one canvas
(data/eval_batches.py). Alone, an image is padded with zeros to a multiple of 8
(evaluate.whole_image_logits) and every convolution pads its input with zeros; in the
canvas, the activations over the padding are not zero (BatchNorm's offsets, biases), and
the 3x3 convolutions and the max-pool near an image's edge would read them. Zeroing
everything past the image's extent before each of those reads, and pooling only the
image's own region in PSP, gives each image the numbers it gets alone. The 1x1
convolutions and the decoders (1x1 projections and pixel shuffles) are pointwise and need
nothing. At output stride 16 the decoders end at half the input's resolution, and the
model's last resize, bilinear, reads neighbours: `resize_each` resizes each image's own
region alone.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

# x (B, h, w, C) at any of the network's resolutions -> x with the padding zeroed.
ZeroPadding = Callable[[jax.Array], jax.Array]


def no_padding(x: jax.Array) -> jax.Array:
  return x


def alone_sizes(sizes: jax.Array) -> jax.Array:
  """(B, 2) sizes of the images as alone: up to a multiple of 8."""
  return -(-jnp.asarray(sizes, jnp.int32) // 8) * 8


def stride(canvas: int, side: int) -> int:
  """The stride of a resolution of `side` entries of a `canvas`-entry input. Each stride 2
  rounds sizes up, so it is the smallest power of 2 with side * stride >= canvas, not
  canvas // side: at output stride 16 a 40-row canvas has ceil(40 / 16) = 3 rows of z,
  and 40 // 3 = 13."""
  return 1 << (-(-canvas // side) - 1).bit_length()  # side 1: every extent is 1 anyway


def extents(sizes: jax.Array, canvas: tuple[int, int], shape: tuple[int, int]) -> jax.Array:
  """(B, 2) rows and columns that hold each image at resolution `shape` of a `canvas`
  input: its size alone divided by the resolution's stride, rounded up as the network
  rounds."""
  strides = jnp.array([stride(canvas[0], shape[0]), stride(canvas[1], shape[1])])
  return -(-alone_sizes(sizes) // strides)


def zero_outside(x: jax.Array, valid: jax.Array) -> jax.Array:
  """x (B, h, w, C) with everything past each example's `valid` (B, 2) rows and columns
  set to zero."""
  rows = jnp.arange(x.shape[1])[None, :, None] < valid[:, 0, None, None]
  cols = jnp.arange(x.shape[2])[None, None, :] < valid[:, 1, None, None]
  return jnp.where((rows & cols)[..., None], x, jnp.zeros((), x.dtype))


def zero_padding(sizes: jax.Array | None, canvas: tuple[int, int]) -> ZeroPadding:
  """The `ZeroPadding` of a canvas batch whose images have `sizes` (B, 2); with None
  (images that fill the batch) nothing is zeroed."""
  if sizes is None:
    return no_padding
  return lambda x: zero_outside(x, extents(sizes, canvas, x.shape[1:3]))


def source_positions(length: int, size_in: jax.Array, size_out: jax.Array,
                     align_corners: bool) -> jax.Array:
  """(B, length) position in each image's input (of `size_in` (B,) entries) that each of
  the first `length` outputs samples when the image is resized to `size_out` (B,), with
  PyTorch's `F.interpolate(mode='bilinear')` rules, clamped to the image: beyond
  `size_out` the outputs repeat the image's last entry (they are padding, never scored)."""
  i = jnp.arange(length, dtype=jnp.float32)[None, :]
  size_in = size_in.astype(jnp.float32)[:, None]
  size_out = size_out.astype(jnp.float32)[:, None]
  if align_corners:  # first and last pixel centres onto first and last
    position = i * ((size_in - 1) / jnp.maximum(size_out - 1, 1))
  else:  # half-pixel centres
    position = (size_in / size_out) * (i + 0.5) - 0.5
  return jnp.clip(position, 0, size_in - 1)


def interpolate(x: jax.Array, positions: jax.Array, size_in: jax.Array, axis: int) -> jax.Array:
  """x (B, ...) linearly interpolated along `axis` at `positions` (B, n), from the two
  entries around each position, both inside each image's `size_in` (B,) entries: the
  padding after an image is never read, so its content changes nothing."""
  low = jnp.floor(positions)
  weight = positions - low
  low = low.astype(jnp.int32)
  high = jnp.minimum(low + 1, size_in[:, None] - 1)
  shape = [1] * x.ndim
  shape[0], shape[axis] = positions.shape
  take = lambda index: jnp.take_along_axis(x, index.reshape(shape), axis=axis)
  weight = weight.reshape(shape).astype(x.dtype)
  return take(low) * (1 - weight) + take(high) * weight


def resize_each(x: jax.Array, sizes_in: jax.Array, sizes_out: jax.Array,
                canvas_out: tuple[int, int], align_corners: bool) -> jax.Array:
  """Bilinear resize of each image's own top-left region, of `sizes_in` (B, 2), to its
  `sizes_out` (B, 2) at the top left of a (B, *canvas_out, C) canvas: no image reads
  another's sizes or the padding around it, so a padded batch resizes each image as
  alone. No antialiasing when shrinking, as PyTorch's bilinear."""
  for axis in (1, 2):
    positions = source_positions(canvas_out[axis - 1], sizes_in[:, axis - 1],
                                 sizes_out[:, axis - 1], align_corners)
    x = interpolate(x, positions, sizes_in[:, axis - 1], axis)
  return x
