"""The domain discriminator of App. E (Table 8) and the gradient reversal layer before it.

The discriminator g_d reads the encoder's output z and tells, at every position, which
domain the image came from. Between z and g_d sits a gradient reversal layer (Ganin and
Lempitsky, the paper's [16]): the identity going forward, -lambda x the gradient going
back. Minimising g_d's cross-entropy then trains g_d to tell the domains apart and the
encoder, through the reversed gradient, to make them indistinguishable: the min-max of
Eq. (11) in one backward pass.
"""

import functools
from collections.abc import Sequence

import jax
from flax import linen as nn

from cct_jax.models import initializers


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gradient_reversal(x: jax.Array, scale: float) -> jax.Array:
  """x forward; the cotangent times -scale backward."""
  return x


def _reversal_forward(x, scale):
  del scale
  return x, None


def _reversal_backward(scale, residuals, cotangent):
  del residuals
  return (-scale * cotangent,)


gradient_reversal.defvjp(_reversal_forward, _reversal_backward)


class Discriminator(nn.Module):
  """Table 8: 3x3 convolutions (64, 128, 256, 512 channels) with LeakyReLU, then a 1x1
  convolution to one logit per domain, all at z's resolution (H/8 x W/8 at output stride
  8). Stride 1 with symmetric padding, as in the fully convolutional discriminator of
  Hung et al. (the paper's [25]), whose LeakyReLU slope (0.2) and initialisation
  (PyTorch's default convolutions) it takes."""
  num_domains: int = 2
  features: Sequence[int] = (64, 128, 256, 512)
  negative_slope: float = 0.2

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    def conv(x, features, kernel, name):
      return nn.Conv(features, (kernel, kernel), padding=((kernel // 2,) * 2,) * 2,
                     kernel_init=initializers.torch_default_kernel,
                     bias_init=initializers.torch_default_bias(x.shape[-1] * kernel**2),
                     name=name)(x)

    x = z
    for i, features in enumerate(self.features):
      x = nn.leaky_relu(conv(x, features, 3, f'conv{i}'), self.negative_slope)
    return conv(x, self.num_domains, 1, 'classifier')
