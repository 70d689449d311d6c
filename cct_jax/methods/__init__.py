"""Training methods as plug-ins: what a method needs of the run, and its loss term.

The runs (train.py, with multidomain.py's steps) ask the configured method (`train.mode`) what it
needs: an unlabelled batch every step and which of its keys, auxiliary decoders, state of
its own beside the model (Mean Teacher's teacher), and which variables are evaluated. They
never test the mode by name. A new method is one module here, ending in its `METHOD`
(a `method.Method`), and one line in `METHODS` (with its name in the import); its settings,
if it has any, are `baselines.<mode>` (its `default_config`).
`build(config)` is where a network is made from a config, with the method that trains it.

A method's unsupervised term is built by `make_term(config, model)`:

    term(params, batch_stats, extra, batch, key) -> (terms, updates)

  batch    the unlabelled batch: the keys `unlabelled_keys` names.
  extra    the method's own state (`init_extra`), e.g. {'teacher': ...}; {} for most.
  terms    {'unsup': ..., ...}: unweighted losses; the train step weights each one
           (`term_weights`: w_u(t) of Eq. 3 for 'unsup', w_w(t) for 'weak', ...).
  updates  the collections the unlabelled pass leaves: 'batch_stats', and 'losses' where
           the model sows terms of its own (the multi-domain discriminator's).
"""

import flax.linen as nn
import ml_collections

from cct_jax import errors, models, perturbations
from cct_jax.methods import cct, input_vat, mean_teacher
from cct_jax.methods.method import Method


METHODS = {
    'semi': cct.METHOD,
    'supervised': Method(),
    'mean_teacher': mean_teacher.METHOD,
    'input_vat': input_vat.METHOD,
}

def default_config() -> ml_collections.ConfigDict:
  """`config.baselines`: each method's own settings under its mode (App. A's baselines';
  CCT's are the perturbations' and the losses')."""
  return ml_collections.ConfigDict({mode: method.default_config()
                                    for mode, method in METHODS.items() if method.default_config})


def get(config) -> Method:
  """The method `config.train.mode` names."""
  if config.train.mode not in METHODS:
    raise errors.UserError(f'train.mode must be one of {tuple(METHODS)}, got {config.train.mode!r}')
  return METHODS[config.train.mode]


def check_config(config) -> None:
  """The method exists, accepts the data it is given and its own settings."""
  method = get(config)
  if config.data.pseudo_labels and not method.pseudo_labels:
    raise errors.UserError(f"data.pseudo_labels train CCT's auxiliary decoders (Eq. 5); "
                           f'train.mode={config.train.mode!r} has none')
  method.check_config(config)


def aux_counts(config) -> dict[str, int]:
  """The auxiliary decoders of the model: perturbation type -> K, none without them."""
  if not get(config).aux_decoders:
    return {}
  return perturbations.decoder_counts(config.perturbations)


def build(config) -> tuple[nn.Module, Method]:
  """The network `config` describes, with the auxiliary decoders its method trains, and
  that method. A multi-domain config (`defaults.multi_domain`) gets the multi-domain
  network: each domain's decoders for its own classes, the discriminator when
  `adversarial.enabled`."""
  domains, adversarial_weight = None, 0.0
  if 'domains' in config:
    domains = {name: domain.num_classes for name, domain in config.domains.items()}
    adversarial_weight = config.adversarial.weight if config.adversarial.enabled else 0.0
  model = models.model_from_config(config.model, aux_counts(config), domains, adversarial_weight)
  return model, get(config)
