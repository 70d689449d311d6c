"""Input VAT (Miyato et al. 2018), an input-consistency baseline of paper App. A (Table 4):
KL between the prediction on x_u and on x_u + r_adv (`baselines.input_vat` holds the
direction's method, xi and eps). Trains the encoder and main decoder only (the paper gives
no settings; these are Miyato et al.'s for CIFAR-10)."""

import jax.numpy as jnp
import ml_collections

from cct_jax import errors, losses, perturbations
from cct_jax.methods.main_decoder import train_logits
from cct_jax.methods.method import Method
from cct_jax.models import cct


def default_config() -> ml_collections.ConfigDict:
  # r_adv = eps * the power-iteration direction, found on the normalised image (see
  # perturbations.adversarial_direction for method and xi). The exact direction ('hvp'):
  # xi * d at xi = 1e-6, about 1e-8 a pixel, is below float32's resolution of the image,
  # so the finite difference Miyato et al. use is rounding noise here (the demo's tiny
  # network on two 64x64 images: cosine 0.11 and -0.11 with the exact direction).
  return ml_collections.ConfigDict(dict(method='hvp', xi=1e-6, eps=6.0, iterations=1))


def check_config(config) -> None:
  method = config.baselines.input_vat.method
  if method not in perturbations.VAT_METHODS:
    raise errors.UserError(f'baselines.input_vat.method {method!r} not in '
                           f'{perturbations.VAT_METHODS}')


def make_term(config, model):
  """KL(p(x_u) || p(x_u + r_adv)), ||r_adv|| = eps per image, p(x_u) a target only.

  The adversarial passes use the BN statistics of their own batch, like the clean pass;
  only the clean pass's statistics are kept. The mean ||r_adv|| over the batch goes to the
  'metrics' collection as `perturbation_norm_input_vat`: 0 shows a direction that vanished.
  """
  cfg = config.baselines.input_vat

  def term(params, batch_stats, extra, batch, key):
    del extra
    images = batch['image']
    variables = {'params': params, 'batch_stats': batch_stats}
    clean, new_stats = train_logits(model, variables, images)
    logits_fn = lambda x: train_logits(model, variables, x)[0]
    r_adv = cfg.eps * perturbations.adversarial_direction(
        logits_fn, images, key, method=cfg.method, xi=cfg.xi, iterations=cfg.iterations)
    adversarial = logits_fn(images + r_adv)
    r_adv_norm = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(r_adv), axis=(1, 2, 3))))
    return ({'unsup': losses.consistency_loss(adversarial[None], clean, 'kl')},
            {'batch_stats': new_stats,
             cct.METRICS: {'perturbation_norm_input_vat': (r_adv_norm,)}})

  return term


METHOD = Method(make_term=make_term, check_config=check_config,
                default_config=default_config)
