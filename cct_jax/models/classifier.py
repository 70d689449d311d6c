"""The classification branch g_c of sec. 3.3 on the CCT encoder, and its CAMs.

g_c is global average pooling and one linear layer over the encoder output z, one logit
per foreground class (multi-label, binary CE). Its parameters sit beside an 'encoder'
tree shaped exactly as CCT's, so a segmentation run can start from the pre-trained
encoder.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from cct_jax.models import initializers
from cct_jax.models.cct import Encoder


class Classifier(nn.Module):
  """`encoder` + g_c; returns (logits (B, num_outputs), z (B, h, w, D)).

  g_c starts as PyTorch's default layer, as the classifier of IRN (Ahn et al.), whose CAMs
  the authors' pseudo-labels come from (github.com/yassouali/CCT, `pseudo_labels/`).
  """
  num_outputs: int
  encoder: Encoder = Encoder()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    z = self.encoder(x, train)
    logits = nn.Dense(self.num_outputs, kernel_init=initializers.torch_default_kernel,
                      bias_init=initializers.torch_default_bias(z.shape[-1]),
                      name='classifier')(jnp.mean(z, axis=(1, 2)))
    return logits, z


def class_activation_maps(z: jax.Array, kernel: jax.Array) -> jax.Array:
  """Zhou et al.'s CAMs, ReLU(w_c . z) for every class c: (B, h, w, D) x (D, F) ->
  (B, h, w, F). The bias of g_c shifts every position alike, so it is left out."""
  return jax.nn.relu(jnp.einsum('bhwd,df->bhwf', z, kernel))
