"""Pyramid pooling module (Zhao et al., PSPNet; paper sec. 4.1), giving the 512-channel z."""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from cct_jax.models import initializers, padding
from cct_jax.models.resnet import BatchNorm, Convolution, conv


def adaptive_pool_weights(valid: jax.Array, size: int, bins: int) -> jax.Array:
  """(B, bins, size) averaging weights with `torch.nn.AdaptiveAvgPool2d`'s bin edges over
  each example's first `valid[b]` rows (or columns) of `size`.

  Bin i covers [floor(i * n / bins), ceil((i + 1) * n / bins)) for n = valid[b]; bins
  overlap when `n % bins != 0`. Pooling over the valid region only keeps the padding of a
  batch of differently sized images out of the pyramid: each image is pooled as if alone.
  """
  n = valid[:, None, None]
  i = jnp.arange(bins)[None, :, None]
  start, end = (i * n) // bins, -((-(i + 1) * n) // bins)
  position = jnp.arange(size)[None, None, :]
  inside = (position >= start) & (position < end)
  return inside / (end - start).astype(jnp.float32)


def upsample_weights(valid: jax.Array, size: int, bins: int) -> jax.Array:
  """(B, size, bins) weights of bilinear upsampling from `bins` to each example's
  `valid[b]` with half-pixel centres and clamped edges (PyTorch's align_corners=False);
  positions past `valid[b]` (padding) get none."""
  n = valid[:, None].astype(jnp.float32)
  position = jnp.arange(size, dtype=jnp.float32)[None, :]
  source = jnp.clip((position + 0.5) * bins / n - 0.5, 0.0, bins - 1)
  low = jnp.floor(source)
  high = jnp.minimum(low + 1, bins - 1)
  fraction = (source - low)[..., None]
  grid = jnp.arange(bins, dtype=jnp.float32)[None, None, :]
  weights = ((grid == low[..., None]) * (1 - fraction) + (grid == high[..., None]) * fraction)
  return weights * (position < n)[..., None]


def adaptive_avg_pool(x: jax.Array, bins: int, valid: jax.Array) -> jax.Array:
  """NHWC adaptive average pooling of each example's valid (rows, columns) `valid` (B, 2)
  to (bins, bins); a box mean is separable, so it is two small matmuls."""
  _, h, w, _ = x.shape
  rows = adaptive_pool_weights(valid[:, 0], h, bins).astype(x.dtype)
  cols = adaptive_pool_weights(valid[:, 1], w, bins).astype(x.dtype)
  return jnp.einsum('bph,bhwc,bqw->bpqc', rows, x, cols)


def upsample(y: jax.Array, size: tuple[int, int], valid: jax.Array) -> jax.Array:
  """(B, bins, bins, C) bilinearly to each example's valid region of `size` (PyTorch's
  `F.interpolate(mode='bilinear')`, also where that region is smaller than the bins, which
  `jax.image.resize` would antialias), zero past it."""
  bins = y.shape[1]
  rows = upsample_weights(valid[:, 0], size[0], bins).astype(y.dtype)
  cols = upsample_weights(valid[:, 1], size[1], bins).astype(y.dtype)
  return jnp.einsum('bhp,bpqc,bwq->bhwc', rows, y, cols)


class PSP(nn.Module):
  """Per bin: pool -> 1x1 conv -> BN -> ReLU -> bilinear back; concat; 3x3 conv -> BN -> ReLU.

  ImageNet does not provide it: its convolutions start as PyTorch's default, which the
  authors' `_PSPModule` keeps.
  """
  features: int = 512
  bins: Sequence[int] = (1, 2, 3, 6)
  dtype: jnp.dtype = jnp.float32
  convolution: Convolution = lax.conv_general_dilated

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               valid: jax.Array | None = None) -> jax.Array:
    """`valid` (B, 2): the rows and columns of each example's x that hold its image (the
    rest pads a batch of differently sized images, models/padding.py); None: all."""
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    conv_ = functools.partial(conv, dtype=self.dtype, convolution=self.convolution,
                              kernel_init=initializers.torch_default_kernel)
    b, h, w, _ = x.shape
    zero_padding = padding.no_padding
    if valid is None:
      valid = jnp.broadcast_to(jnp.array([h, w], jnp.int32), (b, 2))
    else:
      zero_padding = lambda y: padding.zero_outside(y, valid)
    pyramid = [x]
    for i, bins in enumerate(self.bins):
      y = conv_(self.features, 1, name=f'stage{i}_conv')(adaptive_avg_pool(x, bins, valid))
      y = nn.relu(norm(name=f'stage{i}_bn')(y))
      pyramid.append(upsample(y, (h, w), valid))
    y = conv_(self.features, 3, name='bottleneck_conv')(
        zero_padding(jnp.concatenate(pyramid, axis=-1)))
    return nn.relu(norm(name='bottleneck_bn')(y))
