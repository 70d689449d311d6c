"""CCT on several domains (paper sec. 3.4, Tables 2-3; App. E, Eq. 11-12): the domains'
config views, state and steps, which `train.train_and_evaluate` runs for a config with
`domains`.

One shared encoder; per domain a main decoder and K auxiliary decoders for its own classes
(`models.MultiDomainCCT`). Iterations alternate between the domains (in the sorted order of
their names, as ConfigDict keeps them): iteration t trains domain t mod D on an equal
labelled + unlabelled batch from that domain's own pair of streams, with the single-domain
step and loss of Eq. (3) (`train_step.make_train_step` on the domain's view of the config), so
the ramp and learning rate follow the shared iteration count: each domain's ramp over its
own iterations is the same curve. A domain's step changes the shared encoder, its own
decoders and the discriminator, and nothing of another domain's decoders: their
parameters and optimiser state (momentum) are carried over unchanged, so neither SGD's
momentum nor its weight decay moves a decoder on another domain's iteration.

Optional (`adversarial.enabled`): the discriminator of App. E on z through a gradient
reversal layer; the objective gains adversarial.weight x the per-position domain
cross-entropy L_adv (lambda_adv of Eq. 12; L_adv of Eq. 11, the mean of the labelled and
the unlabelled batch's), which the discriminator descends and the encoder, through the
reversal, ascends.

The shared encoder's BN running statistics are shared too, as in the paper; they then
average the domains' statistics and fit neither at evaluation (measured:
benchmarks/results/design_measurements.json). `domain_batch_stats=True` (not in the paper)
keeps one set of running statistics per domain; parameters stay shared.

A config has `domains` (name -> a full data config, whose `num_classes` sizes that domain's
decoders) in place of `data` and `model.num_classes` (`defaults.multi_domain`); the rest is
shared. Evaluation scores every domain on its own splits; the best checkpoint is the one
with the best average val mIoU over the domains, and the final results are each domain's
reported split and their average, as Tables 2-3.
"""


import jax
import ml_collections

from cct_jax import errors, methods, models, train_step
from cct_jax.models.multidomain import decoders_key


def domain_names(config) -> tuple[str, ...]:
  """The domains in training order (ConfigDict keeps its keys sorted)."""
  return tuple(config.domains.keys())


def domain_config(config, domain: str) -> ml_collections.ConfigDict:
  """The single-domain view of `config` for `domain`: its data config as `data` and its
  class count as `model.num_classes`, so that the single-domain step, evaluation and data
  streams serve it unchanged."""
  if domain not in config.domains:
    raise errors.UserError(f'unknown domain {domain!r}; the config has {domain_names(config)}')
  view = config.copy_and_resolve_references()
  with view.unlocked():
    view.data = view.domains[domain]
    view.model.num_classes = view.data.num_classes
  return view


def check_domains(config) -> None:
  """Mistakes in the multi-domain settings (each domain's view is checked as a single-domain
  config: segmentation.check_config)."""
  names = domain_names(config)
  if len(names) < 2:
    raise errors.UserError(f'config.domains needs two or more domains, got {names}')
  if config.adversarial.enabled and config.adversarial.weight <= 0:
    raise errors.UserError('adversarial.weight must be > 0 when adversarial.enabled, got '
                           f'{config.adversarial.weight}')


def create_train_state(config, model: models.MultiDomainCCT, method: methods.Method,
                       num_steps: int, mesh, *, starting_weights: bool = True):
  """The single-domain initial state; with `domain_batch_stats`, one copy of the encoder's
  BN running statistics per domain, which only that domain's steps update and only its
  evaluation reads."""
  state = train_step.create_train_state(config, model, method, num_steps, mesh,
                                        starting_weights=starting_weights)
  if config.domain_batch_stats:  # Copies: a donated state must not hold a buffer twice.
    state = state.replace(batch_stats={name: jax.tree.map(lambda x: x.copy(), state.batch_stats)
                                       for name in domain_names(config)})
  return state


def domain_state(config, state, domain: str):
  """`state` as `domain`'s step and evaluation see it: with its own BN statistics when
  they are kept per domain."""
  if config.domain_batch_stats:
    return state.replace(batch_stats=state.batch_stats[domain])
  return state


def domain_steps_done(step: int, index: int, num_domains: int) -> int:
  """How many of the first `step` iterations trained domain `index` (t mod D == index):
  where that domain's data streams resume."""
  return (step - index + num_domains - 1) // num_domains


def keep_subtrees(new, old, keys: set[str]):
  """`new`, with every leaf below a dict key in `keys` taken from `old` (the same tree
  structure; params, batch statistics, the optimiser state and the method's state alike)."""

  def pick(path, new_leaf, old_leaf):
    frozen = any(getattr(entry, 'key', None) in keys for entry in path)
    return old_leaf if frozen else new_leaf

  return jax.tree_util.tree_map_with_path(pick, new, old)


def make_domain_step(config, model: models.MultiDomainCCT, method: methods.Method, domain: str,
                     num_steps: int):
  """The jitted-to-be step of `domain`: the single-domain step on its decoders, with every
  other domain's decoders (parameters and optimiser state) left as they were.

  One jitted step per domain rather than one `lax.switch` on the domain index: the switch
  ran several times slower per step (benchmarks/results/design_measurements.json) and would
  need every domain's batches in one shape.
  """
  step_fn = train_step.make_train_step(domain_config(config, domain), model.clone(domain=domain),
                                       method, num_steps)
  others = {decoders_key(name) for name in domain_names(config) if name != domain}

  def domain_step(state, labelled, unlabelled):
    new_state, metrics = step_fn(domain_state(config, state, domain), labelled, unlabelled)
    if config.domain_batch_stats:
      new_state = new_state.replace(batch_stats={**state.batch_stats,
                                                 domain: new_state.batch_stats})
    return keep_subtrees(new_state, state, others), metrics

  return domain_step
