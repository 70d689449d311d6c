"""The initial weights of every layer, as the authors' PyTorch code leaves them
(github.com/yassouali/CCT).

Only the trunk comes from ImageNet; the layers it does not provide start as PyTorch's
defaults, which the authors keep for PSP, except the decoders, which they initialise
themselves (`models/decoders.py` there). BatchNorm starts at scale 1, offset 0 in both
frameworks. Flax's fans are PyTorch's: a kernel's fan_in is in-channels x kernel area.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

# `nn.Conv2d`'s and `nn.Linear`'s default weight, kaiming_uniform with a = sqrt(5):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)), a variance of 1 / (3 fan_in). PSP, the classification
# branch g_c (IRN's classifier, whose CAMs the authors' pseudo-labels come from) and the
# discriminator of App. E (Hung et al.'s, the paper's [25]) keep it.
torch_default_kernel = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')

# `kaiming_normal_(nonlinearity='relu')`, an untruncated normal of variance 2 / fan_in: the
# authors' decoders start their 1x1 projection of z, and the sub-kernels of ICNR, so.
kaiming_normal_fan_in = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')

# The trunk's own initialisation when it is not loaded from ImageNet: N(0, 2 / fan_out),
# as the authors' ResNet (`models/backbones/resnet_models.py`).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def torch_default_bias(fan_in: int):
  """PyTorch's default bias of a layer with `fan_in` inputs: U(-1/sqrt(fan_in),
  1/sqrt(fan_in)). A bias initialiser sees only the bias's shape, hence the argument."""
  bound = 1.0 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)
