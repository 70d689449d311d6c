"""Dilated ResNet-50 trunk (paper sec. 4.1).

Bottleneck v1.5 (stride on the 3x3 conv) with the `deep` stem of the authors' ImageNet
weights or torchvision's 7x7 stem. At output stride 8, layer3 and layer4 keep their
resolution and dilate their 3x3 convolutions instead (the PSPNet recipe). Padding is
explicit and symmetric, as in PyTorch, so odd input sizes give PyTorch's feature sizes and
converted torch weights reproduce torch's outputs.

Module names follow the torch `state_dict` keys (`layer1_0/conv1` for `layer1.0.conv1`), so
the weight converter is a renaming plus transposes.
"""

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from cct_jax.models import initializers, padding

# PyTorch BatchNorm defaults: eps 1e-5, momentum 0.1 (= Flax momentum 0.9).
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)

_EXPANSION = 4


# `lax.conv_general_dilated`'s signature: how a network computes its convolutions (the
# caller may pass another implementation of the same sums, e.g. cct_jax.cpu_conv's).
Convolution = Callable[..., jax.Array]


def conv(features: int, kernel: int, stride: int = 1, dilation: int = 1, name: str | None = None,
         dtype=jnp.float32, convolution: Convolution = lax.conv_general_dilated,
         kernel_init=initializers.kaiming_normal_fan_out):
  """A bias-free conv with PyTorch's symmetric padding `dilation * (kernel // 2)`, computing
  in `dtype` (its kernel is stored in float32 whatever `dtype` is) with `convolution`."""
  pad = dilation * (kernel // 2)
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                 kernel_dilation=dilation, use_bias=False, conv_general_dilated=convolution,
                 kernel_init=kernel_init, dtype=dtype, name=name)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """`nn.MaxPool2d(3, stride=2, padding=1)`: pads with -inf, so padding never wins."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class Bottleneck(nn.Module):
  planes: int
  stride: int = 1
  dilation: int = 1
  train: bool = False
  dtype: jnp.dtype = jnp.float32
  convolution: Convolution = lax.conv_general_dilated

  @nn.compact
  def __call__(self, x: jax.Array,
               zero_padding: padding.ZeroPadding = padding.no_padding) -> jax.Array:
    norm = functools.partial(BatchNorm, use_running_average=not self.train, dtype=self.dtype)
    conv_ = functools.partial(conv, dtype=self.dtype, convolution=self.convolution)
    out_features = self.planes * _EXPANSION
    y = nn.relu(norm(name='bn1')(conv_(self.planes, 1, name='conv1')(x)))
    y = conv_(self.planes, 3, self.stride, self.dilation, name='conv2')(zero_padding(y))
    y = nn.relu(norm(name='bn2')(y))
    y = norm(name='bn3')(conv_(out_features, 1, name='conv3')(y))
    if self.stride != 1 or x.shape[-1] != out_features:
      x = conv_(out_features, 1, self.stride, name='downsample_conv')(x)
      x = norm(name='downsample_bn')(x)
    return nn.relu(x + y)


def stage_strides_and_dilations(output_stride: int) -> list[tuple[int, int, int]]:
  """(stride, first-block dilation, other-block dilation) for layer1..layer4.

  A stage that loses its stride dilates by the product of the strides removed so far; its
  first block uses half of that (it still sees the previous stage's spacing).
  """
  if output_stride == 4:
    return [(1, 1, 1), (1, 1, 2), (1, 2, 4), (1, 4, 8)]
  if output_stride == 8:
    return [(1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4)]
  if output_stride == 16:
    return [(1, 1, 1), (2, 1, 1), (2, 1, 1), (1, 1, 2)]
  raise ValueError(f'output_stride must be 4, 8 or 16, got {output_stride}')


def stage_of(module_name: str) -> int:
  """The stage a trunk module belongs to: 0 for the stem, i for `layer{i}_{j}`."""
  if module_name.startswith('layer'):
    return int(module_name.removeprefix('layer').split('_')[0])
  return 0


class ResNet(nn.Module):
  """ResNet trunk returning layer4's features (B, H/os, W/os, 32 * width).

  `width=64, stage_sizes=(3, 4, 6, 3)` is ResNet-50; tests use e.g. `width=8,
  stage_sizes=(1, 1, 1, 1)`. `return_stages=True` also returns every stage's output,
  for parity checks against torch.
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  stem: str = 'deep'
  output_stride: int = 8
  dtype: jnp.dtype = jnp.float32  # of the computation; parameters stay float32
  convolution: Convolution = lax.conv_general_dilated
  # Training keeps only each block's input for the backward pass and computes the rest of
  # the block again there (jax.checkpoint): less memory, one more forward pass of the trunk.
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_stages: bool = False,
               zero_padding: padding.ZeroPadding = padding.no_padding):
    """`zero_padding`: see padding.py (a batch of differently sized images)."""
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    conv_ = functools.partial(conv, dtype=self.dtype, convolution=self.convolution)
    stages = {}
    if self.stem == 'deep':
      x = nn.relu(norm(name='bn1')(conv_(self.width, 3, 2, name='conv1')(x)))
      x = nn.relu(norm(name='bn2')(conv_(self.width, 3, name='conv2')(zero_padding(x))))
      x = nn.relu(norm(name='bn3')(conv_(2 * self.width, 3, name='conv3')(zero_padding(x))))
    elif self.stem == 'torchvision':
      x = nn.relu(norm(name='bn1')(conv_(self.width, 7, 2, name='conv1')(x)))
    else:
      raise ValueError(f"stem must be 'deep' or 'torchvision', got {self.stem!r}")
    # Zeros, not -inf: the stem ends in a ReLU, so a zero never wins over the image either.
    stages['stem'] = x = max_pool_3x3_s2(zero_padding(x))

    layout = stage_strides_and_dilations(self.output_stride)
    # zero_padding (argument 2, after self) is a function: static. The parameters' names
    # are the same with and without remat.
    block = nn.remat(Bottleneck, static_argnums=(2,)) if self.remat and train else Bottleneck
    for i, (num_blocks, (stride, first_dilation, dilation)) in enumerate(
        zip(self.stage_sizes, layout, strict=True)):
      for j in range(num_blocks):
        x = block(self.width * 2**i, stride if j == 0 else 1,
                       first_dilation if j == 0 else dilation, train, self.dtype,
                       self.convolution, name=f'layer{i + 1}_{j}')(x, zero_padding)
      stages[f'layer{i + 1}'] = x
    return (x, stages) if return_stages else x
