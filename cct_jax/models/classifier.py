"""The classification branch g_c of sec. 3.3, and its CAMs.

g_c is global average pooling and one linear layer over an encoder's output z, one logit
per foreground class (multi-label, binary CE). The encoder is CCT's (the paper's text: its
parameters sit in an 'encoder' tree shaped exactly as CCT's, so a segmentation run can
start from it) or the ResNet trunk alone (`TrunkEncoder`, the CAM network of IRN, Ahn et
al., which made the authors' pseudo-labels).
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from cct_jax.models import initializers
from cct_jax.models.cct import Encoder
from cct_jax.models.resnet import ResNet


class TrunkEncoder(nn.Module):
  """The ResNet trunk alone, z = layer4's features, under the 'trunk' name CCT's encoder
  gives it (so ImageNet weights and the trunk's learning rate find it)."""
  trunk: ResNet = ResNet()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.trunk(x.astype(self.trunk.dtype), train)


class Classifier(nn.Module):
  """`encoder` + g_c; returns (logits (B, num_outputs), z (B, h, w, D)).

  g_c starts as PyTorch's default layer, as the classifier of IRN (Ahn et al.), whose CAMs
  the authors' pseudo-labels come from (github.com/yassouali/CCT, `pseudo_labels/`).
  `frozen_batch_norm` normalises with the running statistics in training too and never
  updates them (IRN's FixedBatchNorm: the ImageNet statistics); the BN scales and offsets
  still learn.
  """
  num_outputs: int
  encoder: Encoder | TrunkEncoder = Encoder()
  use_bias: bool = True
  frozen_batch_norm: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    z = self.encoder(x, train and not self.frozen_batch_norm)
    logits = nn.Dense(self.num_outputs, use_bias=self.use_bias,
                      kernel_init=initializers.torch_default_kernel,
                      bias_init=initializers.torch_default_bias(z.shape[-1]),
                      name='classifier')(jnp.mean(z, axis=(1, 2)))
    return logits, z


def class_activation_maps(z: jax.Array, kernel: jax.Array) -> jax.Array:
  """Zhou et al.'s CAMs, ReLU(w_c . z) for every class c: (B, h, w, D) x (D, F) ->
  (B, h, w, F). The bias of g_c shifts every position alike, so it is left out."""
  return jax.nn.relu(jnp.einsum('bhwd,df->bhwf', z, kernel))
