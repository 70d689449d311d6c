"""Pixel-shuffle decoder (paper sec. 4.1 and App. D), as the authors' `models/decoders.py`
(github.com/yassouali/CCT).

Every decoder, main or auxiliary, is the same stateless network: a 1x1 projection of z to
C channels, then x2 sub-pixel upsampling blocks (three at output stride 8), giving logits
at the input resolution. It holds parameters only (no batch statistics), so a stack of K
decoders is a pytree with a leading axis of size K that `jax.vmap` runs as one computation.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cct_jax.models import initializers


def pixel_shuffle(x: jax.Array, scale: int = 2) -> jax.Array:
  """NHWC depth-to-space with PyTorch's channel order.

  out[b, s*y + i, s*x + j, c] = x[b, y, x, s*s*c + s*i + j], as `torch.nn.PixelShuffle`
  does on NCHW, so that converted torch weights produce the same picture.
  """
  b, h, w, channels = x.shape
  out_channels = channels // (scale * scale)
  x = x.reshape(b, h, w, out_channels, scale, scale)
  x = x.transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h * scale, w * scale, out_channels)


def icnr_init(scale: int = 2, base_init=initializers.kaiming_normal_fan_in):
  """ICNR (Aitken et al., 2017): each group of scale**2 output channels starts equal.

  Output channel s*s*c + r copies sub-kernel c for every r, so the pixel shuffle of the
  initial output is a nearest-neighbour upsampling: no checkerboard at the start. The
  sub-kernels are drawn as the authors' `icnr` draws them, kaiming-normal over fan_in.
  """

  def init(key, shape, dtype=jnp.float32):
    fan_in, fan_out = shape
    sub_kernel = base_init(key, (fan_in, fan_out // (scale * scale)), dtype)
    return jnp.repeat(sub_kernel, scale * scale, axis=1)

  return init


class Decoder(nn.Module):
  """1x1 conv z -> C (no bias), then `num_upsamples` x [1x1 conv C -> 4C, ReLU, shuffle x2].

  The 1x1 convolutions are `Dense` layers on the channel axis: the same arithmetic, and a
  vmapped stack of them lowers to one batched matmul. `final_relu=True` keeps the
  authors' ReLU in the last block (non-negative logits). C is the class count in
  the paper; `width` > 0 sets the channels of every block but the last instead, because
  a network trained from scratch with few classes can lose a class for good when one of
  so few ReLU channels dies (configs/demo.py: fashion5).

  Initialised as the authors' `upsample`: the projection kaiming-normal, the upsampling
  convs ICNR with PyTorch's default bias.
  """
  num_classes: int
  num_upsamples: int = 3
  final_relu: bool = True
  width: int = 0
  dtype: jnp.dtype = jnp.float32  # of the computation; parameters stay float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    hidden = self.width or self.num_classes
    x = nn.Dense(hidden, use_bias=False, kernel_init=initializers.kaiming_normal_fan_in,
                 dtype=self.dtype, name='conv_in')(z)
    for i in range(self.num_upsamples):
      last = i == self.num_upsamples - 1
      x = nn.Dense(4 * (self.num_classes if last else hidden), kernel_init=icnr_init(),
                   bias_init=initializers.torch_default_bias(x.shape[-1]), dtype=self.dtype,
                   name=f'upsample_{i}')(x)
      if self.final_relu or not last:
        x = nn.relu(x)
      x = pixel_shuffle(x)
    return x


def sub_pixel_logits(decoder: Decoder, params: Any, z: jax.Array) -> jax.Array:
  """`decoder`'s logits for z (B, h, w, D) in sub-pixel order, (B, h w, 4^n, C) as
  `losses.sub_pixel_order` puts the (B, 2^n h, 2^n w, C) ones: the same numbers, computed
  without a pixel shuffle.

  Every layer is 1x1, so each output pixel depends on one position of z alone: each x2
  block writes its four output channel groups beside the sub-pixels already made instead
  of into the image. No full-resolution map is transposed, forward or backward, and no
  shuffled image has the class axis as its minor dimension (on a TPU, 21 classes padded
  to 128 lanes): by XLA's TPU model one decoder and its MSE take 55% fewer cycles
  (benchmarks/tpu_decoder_loss.py; with h and w kept apart, more than with the shuffles).
  `params` is `decoder`'s parameter tree; the arithmetic is its Dense layers' (inputs,
  kernels and biases in `decoder.dtype`).
  """
  dtype = decoder.dtype
  b, h, w, features = z.shape
  x = jnp.einsum('bpd,dc->bpc', z.reshape(b, h * w, features).astype(dtype),
                 params['conv_in']['kernel'].astype(dtype))
  x = x[:, :, None]  # one sub-pixel per position
  for i in range(decoder.num_upsamples):
    layer = params[f'upsample_{i}']
    # Output channel 4c + r is class (or channel) c of sub-pixel r (torch's PixelShuffle):
    # the kernel's columns reordered sub-pixel first, a plain matmul writes the four
    # sub-pixels one after the other, and a reshape puts them beside those already made.
    channels = layer['bias'].shape[0] // 4
    kernel = layer['kernel'].reshape(-1, channels, 4).transpose(0, 2, 1).reshape(
        -1, 4 * channels)
    bias = layer['bias'].reshape(channels, 4).T.reshape(-1)
    x = x @ kernel.astype(dtype) + bias.astype(dtype)
    if decoder.final_relu or i < decoder.num_upsamples - 1:
      x = nn.relu(x)
    x = x.reshape(b, h * w, -1, channels)
  return x


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
  """What the main and every auxiliary decoder of a network share (`Decoder`'s fields)."""
  num_classes: int
  num_upsamples: int = 3
  final_relu: bool = True
  width: int = 0
  dtype: Any = jnp.float32

  def build(self, **module_kwargs) -> Decoder:
    return Decoder(self.num_classes, self.num_upsamples, self.final_relu, self.width,
                   self.dtype, **module_kwargs)
