"""Pyramid pooling module (Zhao et al., PSPNet; paper sec. 4.1), giving the 512-channel z."""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from cct_jax.models import initializers
from cct_jax.models.resnet import BatchNorm, Convolution, conv


def adaptive_pool_matrix(size: int, bins: int) -> np.ndarray:
  """(bins, size) averaging weights with `torch.nn.AdaptiveAvgPool2d`'s bin edges.

  Bin i covers [floor(i * size / bins), ceil((i + 1) * size / bins)); bins overlap when
  `size % bins != 0`. Returned as a constant so pooling is two small matmuls.
  """
  weights = np.zeros((bins, size), np.float32)
  for i in range(bins):
    start = (i * size) // bins
    end = -((-(i + 1) * size) // bins)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x: jax.Array, bins: int) -> jax.Array:
  """NHWC adaptive average pooling to (bins, bins); a box mean is separable."""
  _, h, w, _ = x.shape
  rows = jnp.asarray(adaptive_pool_matrix(h, bins), x.dtype)
  cols = jnp.asarray(adaptive_pool_matrix(w, bins), x.dtype)
  return jnp.einsum('ph,bhwc,qw->bpqc', rows, x, cols)


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
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    conv_ = functools.partial(conv, dtype=self.dtype, convolution=self.convolution,
                              kernel_init=initializers.torch_default_kernel)
    b, h, w, _ = x.shape
    pyramid = [x]
    for i, bins in enumerate(self.bins):
      y = conv_(self.features, 1, name=f'stage{i}_conv')(adaptive_avg_pool(x, bins))
      y = nn.relu(norm(name=f'stage{i}_bn')(y))
      # Upsampling with half-pixel centres is PyTorch's align_corners=False.
      pyramid.append(jax.image.resize(y, (b, h, w, self.features), 'bilinear'))
    y = conv_(self.features, 3, name='bottleneck_conv')(jnp.concatenate(pyramid, axis=-1))
    return nn.relu(norm(name='bottleneck_bn')(y))
