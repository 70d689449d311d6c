"""CCT on several domains (paper sec. 3.4, Fig. 4; App. E): one shared encoder, and per
domain its own main decoder and K auxiliary decoders, sized for that domain's classes.

Each domain's decoders are a `CCT` module that shares this model's encoder and only
decodes (`CCT.decode`), so its parameters sit under `decoders_<domain>` with the same
layout as a single-domain model's. `domain` says whose decoders a call runs: the run
and the evaluation clone the model once per domain (`model.clone(domain=name)`), so a
domain's step never touches another domain's decoders. With `adversarial_weight > 0` the
discriminator of App. E reads z through a gradient reversal layer during training and
sows lambda_adv x its per-position cross-entropy against the domain's index (Eq. 12's
term) into the 'losses' collection, which the train step adds to the objective.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from cct_jax import losses
from cct_jax.models.cct import CCT, Encoder, Perturbation
from cct_jax.models.discriminator import Discriminator, gradient_reversal


def decoders_key(domain: str) -> str:
  """The parameter subtree that holds `domain`'s main and auxiliary decoders."""
  return f'decoders_{domain}'


class MultiDomainCCT(nn.Module):
  """`num_classes` maps each domain to its class count; its order (ConfigDict keeps keys
  sorted) gives the domain indices the discriminator predicts.

  `__call__(x, train, perturbations, key, sub_pixel)` returns `domain`'s `(main_logits, aux)`,
  as `CCT` does. With `domain=None` (initialisation) it runs every domain's decoders and the
  discriminator, so that every parameter exists, and returns a dict of them by domain.
  """
  num_classes: Mapping[str, int]
  encoder: Encoder = Encoder()
  aux_counts: Mapping[str, int] = None
  final_relu: bool = True
  decoder_width: int = 0  # see Decoder.width
  remat_decoders: bool = False  # see StackedDecoders.one_at_a_time
  adversarial_weight: float = 0.0  # lambda_adv of Eq. 12; 0: no discriminator
  domain: str | None = None

  def setup(self):
    self.decoders = {
        name: CCT(classes, encoder=self.encoder, aux_counts=self.aux_counts,
                  final_relu=self.final_relu, decoder_width=self.decoder_width,
                  remat_decoders=self.remat_decoders)
        for name, classes in self.num_classes.items()}
    if self.adversarial_weight > 0:
      self.discriminator = Discriminator(num_domains=len(self.num_classes))

  def __call__(self, x: jax.Array, train: bool = False,
               perturbations: Mapping[str, Perturbation] | None = None,
               key: jax.Array | None = None, sub_pixel: bool = False,
               sizes: jax.Array | None = None):
    z = self.encoder(x, train, sizes)
    size = None if sub_pixel else x.shape[1:3]
    if self.domain is None:
      if self.adversarial_weight > 0:
        self.discriminator(z)
      return {name: decoders.decode(z, size, perturbations, key, sizes)
              for name, decoders in self.decoders.items()}
    if self.domain not in self.num_classes:
      raise ValueError(f'unknown domain {self.domain!r}; the model has {tuple(self.num_classes)}')
    if self.adversarial_weight > 0 and train:
      # lambda_adv weighs the term for both players (Eq. 12): the discriminator descends
      # it, the encoder ascends it through the reversal. Weighing only the encoder's side
      # let the discriminator, which sees one domain per step, blow up to NaN within ten
      # alternating steps at the demo's lr.
      logits = self.discriminator(gradient_reversal(z, 1.0))
      index = list(self.num_classes).index(self.domain)
      domain_ce = losses.cross_entropy(logits, jnp.full(logits.shape[:-1], index, jnp.int32))
      self.sow('losses', 'adversarial', self.adversarial_weight * domain_ce)
    return self.decoders[self.domain].decode(z, size, perturbations, key, sizes)
