"""Images of different sizes in one batch, each predicted exactly as if alone.

A batch of differently sized images is padded at the bottom and right to one canvas
(data/eval_batches.py). Alone, an image is padded with zeros to a multiple of 8 (the
network's stride) and every convolution pads its input with zeros; in the canvas, the
activations over the padding are not zero (BatchNorm's offsets, biases), and the 3x3
convolutions and the max-pool near an image's edge would read them. Zeroing everything
past the image's extent before each of those reads, and pooling only the image's own
region in PSP, gives each image the numbers it gets alone. The 1x1 convolutions and the
decoders (1x1 projections and pixel shuffles) are pointwise and need nothing.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

# x (B, h, w, C) at any of the network's resolutions -> x with the padding zeroed.
ZeroPadding = Callable[[jax.Array], jax.Array]


def no_padding(x: jax.Array) -> jax.Array:
  return x


def extents(sizes: jax.Array, canvas: tuple[int, int], shape: tuple[int, int]) -> jax.Array:
  """(B, 2) rows and columns that hold each image at resolution `shape` of a `canvas`
  input: its size up to a multiple of 8, as alone, divided by the resolution's stride."""
  stride = jnp.array([canvas[0] // shape[0], canvas[1] // shape[1]])
  return -(-(-(-jnp.asarray(sizes, jnp.int32) // 8) * 8) // stride)


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
