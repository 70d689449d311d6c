"""CCT's unsupervised terms (paper sec. 3.2, Eq. 2-3; sec. 3.3, Eq. 5-6): the auxiliary
decoders on perturbed copies of z trained to agree with the main decoder, the optional
pairwise term (App. B), and L_w when the unlabelled batch carries pseudo-labels."""

import jax
import jax.numpy as jnp

from cct_jax import losses, models, perturbations
from cct_jax.models import cct

# The two streams of the step's key (fold_in of it): the perturbations' draws, and the
# pixels the pairwise loss samples.
PERTURBATION_STREAM, PAIRWISE_STREAM = 0, 1


def unsupervised_loss(config, aux: dict[str, jax.Array], main_logits, key):
  """L_u averaged over all K auxiliary decoders (Eq. 2), plus the optional pairwise term.

  Each perturbation type's mean is weighted by its count, so the result is the mean over
  the K decoders without concatenating K full-resolution predictions.
  """
  threshold = (config.loss.confidence_threshold if config.loss.confidence_masking else None)
  counts = {name: logits.shape[0] for name, logits in aux.items()}
  loss_u = sum(counts[name] * losses.consistency_loss(logits, main_logits,
                                                      config.loss.unsupervised, threshold)
               for name, logits in aux.items()) / sum(counts.values())
  pairwise = jnp.zeros(())
  if config.loss.pairwise_weight > 0:
    stacked = jnp.concatenate(list(aux.values()), axis=0)
    pairwise = losses.pairwise_loss(stacked, key, config.loss.pairwise_decoders)
  return loss_u, pairwise


def weak_loss(aux: dict[str, jax.Array], pseudo_labels: jax.Array) -> jax.Array:
  """L_w over all K auxiliary decoders (Eq. 6), each type's mean weighted by its count;
  the logits are brought to the pseudo-labels' size first."""
  counts = {name: logits.shape[0] for name, logits in aux.items()}
  size = pseudo_labels.shape[1:3]
  return sum(counts[name] * losses.weak_loss(cct.resize_logits(logits, size), pseudo_labels)
             for name, logits in aux.items()) / sum(counts.values())


def check_config(config) -> None:
  if 'decoders' in models.remat_parts(config.model) and config.loss.pairwise_weight > 0:
    raise ValueError("loss.pairwise_weight > 0 compares the auxiliary decoders' predictions "
                     "with each other; model.remat 'decoders' keeps one at a time")


def per_decoder_losses(config, threshold, pseudo_labels: jax.Array | None):
  """(logits, main_logits) of one auxiliary decoder -> its L_u (and L_w)."""

  def losses_of(logits, main_logits):
    # In the pixel order of the decoder's last shuffle, XLA drops that shuffle's transposes
    # and the full-resolution class-minor layouts they write: the same mean for a third
    # of the cycles on a TPU (benchmarks/tpu_decoder_loss.py).
    values = {'unsup': losses.consistency_loss(
        losses.space_to_depth(logits)[None], losses.space_to_depth(main_logits),
        config.loss.unsupervised, threshold)}
    if pseudo_labels is not None:
      values['weak'] = losses.cross_entropy(
          cct.resize_logits(logits, pseudo_labels.shape[1:3]), pseudo_labels)
    return values

  return losses_of


def make_term(config, model):
  perturbation_fns = perturbations.build_perturbations(config.perturbations)
  one_at_a_time = 'decoders' in models.remat_parts(config.model)
  threshold = (config.loss.confidence_threshold if config.loss.confidence_masking else None)

  def term(params, batch_stats, extra, batch, key):
    del extra
    # With remat of the decoders, each decoder's losses are taken as it runs (each
    # decoder's mean, averaged over the K: the same sums), so that no K full-resolution
    # predictions are held at once.
    per_decoder = (per_decoder_losses(config, threshold, batch.get('mask'))
                   if one_at_a_time else None)
    (main_u, aux), updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, batch['image'], train=True,
        perturbations=perturbation_fns, key=jax.random.fold_in(key, PERTURBATION_STREAM), resize=False,
        per_decoder=per_decoder, mutable=['batch_stats', 'losses', cct.METRICS])
    if one_at_a_time:
      return jax.tree.map(lambda *v: jnp.mean(jnp.concatenate(v)), *aux.values()), updates
    loss_u, pairwise = unsupervised_loss(config, aux, main_u,
                                        jax.random.fold_in(key, PAIRWISE_STREAM))
    terms = {'unsup': loss_u}
    if config.loss.pairwise_weight > 0:
      terms['pairwise'] = pairwise
    if 'mask' in batch:  # pseudo-labels of a weak set (Eq. 5): auxiliary decoders only
      terms['weak'] = weak_loss(aux, batch['mask'])
    return terms, updates

  return term
