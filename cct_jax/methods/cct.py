"""CCT's unsupervised terms (paper sec. 3.2, Eq. 2-3; sec. 3.3, Eq. 5-6): the auxiliary
decoders on perturbed copies of z trained to agree with the main decoder, the optional
pairwise term (App. B), and L_w when the unlabelled batch carries pseudo-labels."""

import jax
import jax.numpy as jnp

from cct_jax import losses, models, perturbations
from cct_jax.methods.method import Method
from cct_jax.models import cct

# The two streams of the step's key (fold_in of it): the perturbations' draws, and the
# pixels the pairwise loss samples.
PERTURBATION_STREAM, PAIRWISE_STREAM = 0, 1


def check_config(config) -> None:
  if 'decoders' in models.remat_parts(config.model) and config.loss.pairwise_weight > 0:
    raise ValueError("loss.pairwise_weight > 0 compares the auxiliary decoders' predictions "
                     "with each other; model.remat 'decoders' keeps one at a time")


def decoder_losses(config, main_logits: jax.Array, pseudo_labels: jax.Array | None,
                   rows: int):
  """-> one auxiliary decoder's logits, in sub-pixel order (B, h w, 4^n, C) as
  `StackedDecoders.map` hands them -> its L_u (Eq. 2) and, with pseudo-labels, L_w
  (Eq. 6). Every decoder's mean is over the same pixels, so the mean of these over the K
  decoders is each loss's mean over all of them.

  The main logits come in the same order (`CCT` with sub_pixel), made a target once for
  all K decoders; a mean over pixels is the same in any order. `rows`: z's (h), with which
  `cct.pixel_pairing` pairs the pseudo-labels with the decoders' logits.
  """
  threshold = (config.loss.confidence_threshold if config.loss.confidence_masking else None)
  target = losses.consistency_target(main_logits, threshold)
  weak_of = None
  if pseudo_labels is not None:
    labels, paired = cct.pixel_pairing(pseudo_labels, main_logits.shape, rows)
    weak_of = lambda logits: losses.cross_entropy(paired(logits), labels)

  def losses_of(logits):
    values = {'unsup': losses.consistency_to_target(logits[None], target,
                                                    config.loss.unsupervised)}
    if weak_of is not None:
      values['weak'] = weak_of(logits)
    return values

  return losses_of


def mean_over_decoders(stacked: dict) -> dict:
  """{type: pytree of per-decoder values (K_type, ...)} -> their means over all K."""
  return jax.tree.map(lambda *values: jnp.mean(jnp.concatenate(values)), *stacked.values())


def make_term(config, model):
  perturbation_fns = perturbations.build_perturbations(config.perturbations)
  pairwise = config.loss.pairwise_weight > 0

  def term(params, batch_stats, extra, batch, key):
    del extra
    (main_u, aux), updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, batch['image'], train=True,
        perturbations=perturbation_fns, key=jax.random.fold_in(key, PERTURBATION_STREAM),
        sub_pixel=True, mutable=['batch_stats', 'losses'])
    rows = cct.feature_rows(batch['image'].shape[1], config.model.output_stride)
    losses_of = decoder_losses(config, main_u, batch.get('mask'), rows)
    # Each decoder's losses are taken as it runs: with model.remat no K full-resolution
    # predictions are held at once. The pairwise term alone needs them all.
    run = {name: stack.map(lambda logits: (losses_of(logits), logits if pairwise else None))
           for name, stack in aux.items()}
    terms = mean_over_decoders({name: values for name, ((values, _), _) in run.items()})
    if pairwise:
      stacked = jnp.concatenate([logits for (_, logits), _ in run.values()])
      terms['pairwise'] = losses.pairwise_loss(stacked, jax.random.fold_in(key, PAIRWISE_STREAM),
                                               config.loss.pairwise_decoders)
    # The size of each type's perturbations, for the log (cct.sown): a perturbation that
    # leaves z as it is shows as 0 (an I-VAT direction of zero, a mask that never fires).
    norms = {f'perturbation_norm_{name}': (jnp.mean(sizes),) for name, (_, sizes) in run.items()}
    return terms, {**updates, cct.METRICS: norms}

  return term


METHOD = Method(make_term=make_term, aux_decoders=True, pseudo_labels=True,
                check_config=check_config)
