"""CCT on several domains (paper sec. 3.4, Tables 2-3; App. E, Eq. 11-12):
`train_and_evaluate(config, workdir)` for a config with `domains`.

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


import functools

import jax
import ml_collections
import numpy as np
from absl import logging

from cct_jax import evaluate, models, train, train_step
from cct_jax.data import factory as data_factory, pipeline as data_pipeline
from cct_jax.models.multidomain import decoders_key


def domain_names(config) -> tuple[str, ...]:
  """The domains in training order (ConfigDict keeps its keys sorted)."""
  return tuple(config.domains.keys())


def domain_config(config, domain: str) -> ml_collections.ConfigDict:
  """The single-domain view of `config` for `domain`: its data config as `data` and its
  class count as `model.num_classes`, so that the single-domain step, evaluation and data
  streams serve it unchanged."""
  if domain not in config.domains:
    raise ValueError(f'unknown domain {domain!r}; the config has {domain_names(config)}')
  view = config.copy_and_resolve_references()
  with view.unlocked():
    view.data = view.domains[domain]
    view.model.num_classes = view.data.num_classes
  return view


def check_config(config) -> None:
  """Mistakes that would otherwise surface deep in a run: each domain's view must pass the
  single-domain checks."""
  names = domain_names(config)
  if len(names) < 2:
    raise ValueError(f'config.domains needs two or more domains, got {names}')
  if config.adversarial.enabled and config.adversarial.weight <= 0:
    raise ValueError('adversarial.weight must be > 0 when adversarial.enabled, got '
                     f'{config.adversarial.weight}')
  for name in names:
    train.check_config(domain_config(config, name))


def create_train_state(config, model: models.MultiDomainCCT, num_steps: int, mesh):
  """The single-domain initial state; with `domain_batch_stats`, one copy of the encoder's
  BN running statistics per domain, which only that domain's steps update and only its
  evaluation reads."""
  state = train_step.create_train_state(config, model, num_steps, mesh)
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


def make_domain_step(config, model: models.MultiDomainCCT, domain: str, num_steps: int):
  """The jitted-to-be step of `domain`: the single-domain step on its decoders, with every
  other domain's decoders (parameters and optimiser state) left as they were.

  One jitted step per domain rather than one `lax.switch` on the domain index, measured at
  demo smoke scale (configs/demo_two_domains.py:smoke, batch 4 + 4 of 64x64, 4 CPU devices
  on 2 shared, heavily loaded cores; two runs each): the two steps compiled in 98 / 94 s
  together and ran in 224 / 202 ms (median), the switch compiled in 69 / 58 s but ran in
  2355 / 1855 ms, nine times slower: over 2400 iterations ~10 min against ~85. A
  switch would also need every domain's batches in one shape, which Cityscapes (512x1024)
  and CamVid (360x480) are not.
  """
  step_fn = train_step.make_train_step(domain_config(config, domain), model.clone(domain=domain),
                                  num_steps)
  others = {decoders_key(name) for name in domain_names(config) if name != domain}

  def domain_step(state, labelled, unlabelled):
    new_state, metrics = step_fn(domain_state(config, state, domain), labelled, unlabelled)
    if config.domain_batch_stats:
      new_state = new_state.replace(batch_stats={**state.batch_stats,
                                                 domain: new_state.batch_stats})
    return keep_subtrees(new_state, state, others), metrics

  return domain_step


class MultiDomainTrainer(train.SingleDomainTrainer):
  """Alternating domains: iteration t trains domain t mod D on its own streams; every
  domain is an evaluation target, and the best checkpoint is the one with the best average
  val mIoU over the domains."""

  def check_config(self, config) -> None:
    check_config(config)

  @functools.cached_property
  def targets(self) -> dict:
    return {name: domain_config(self.config, name) for name in domain_names(self.config)}

  def make_predict_fn(self, target):
    predict = train_step.make_predict_fn(self.targets[target], self.model.clone(domain=target))
    return lambda state, images, sizes=None: predict(domain_state(self.config, state, target),
                                                     images, sizes)

  def num_steps(self) -> int:
    """`train.num_steps` iterations in all, or `train.num_epochs` passes over the largest
    unlabelled set for every domain: D x the iterations of the domain that needs most."""
    if self.config.train.num_steps > 0:
      return self.config.train.num_steps
    per_domain = [train.total_steps(view, len(data_factory.make_source(view.data,
                                                                       'train_unlabelled')))
                  for view in self.targets.values()]
    return len(per_domain) * max(per_domain)

  def create_state(self, num_steps: int):
    return create_train_state(self.config, self.model, num_steps, self.mesh)

  def start(self, num_steps: int, first_step: int) -> None:
    names = tuple(self.targets)
    for name, view in self.targets.items():
      logging.info('%s labelled images: %s', name, data_factory.split_rule(view.data))
    self.streams = {name: data_pipeline.make_train_streams(
        view.data, device_count=jax.device_count(), process_index=jax.process_index(),
        process_count=jax.process_count(),
        start_step=domain_steps_done(first_step, index, len(names)))
                    for index, (name, view) in enumerate(self.targets.items())}
    self.step_fns = {name: train_step.jit_train_step(
        make_domain_step(self.config, self.model, name, num_steps), self.mesh,
        self.method.uses_unlabelled) for name in names}

  def train_one(self, state, step):
    names = tuple(self.targets)
    name = names[step % len(names)]
    state, metrics = self.step_fns[name](state, *self.draw(self.streams[name],
                                                           self.targets[name].data))
    return state, {f'{k}/{name}': v for k, v in metrics.items()}

  def images_per_step(self) -> float:
    views = self.targets.values()
    return (np.mean([v.data.batch_size_labelled for v in views]) + self.method.uses_unlabelled *
            np.mean([v.data.batch_size_unlabelled for v in views]))

  def stop(self) -> None:
    for streams in self.streams.values():
      streams.close()

  def report(self, state) -> dict:
    """Every domain's reported split and their average (Tables 2-3), in results.json."""
    domains = self.evaluate_targets(state, int(state.step), role=-1)
    for name, scores in domains.items():
      logging.info('%s %s scores of the best checkpoint (step %d):\n%s', name,
                   scores['split'], int(state.step), evaluate.format_table(scores))
    results = {'domains': domains, 'step': int(state.step), **train.average_scores(domains)}
    self.writer.write_eval(int(state.step), train.average_tag(domains), results)
    path = self.writer.write_json('results.json', results)
    logging.info('average mIoU over %s: %.1f (step %d), written to %s', ', '.join(domains),
                 100 * results['miou'], int(state.step), path)
    return results


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains with alternating domains, evaluates every domain's first evaluation split every
  `train.eval_every` iterations (the best checkpoint by the average mIoU kept apart),
  then scores the best checkpoint on every domain's reported split. Resumes from
  `workdir`. Returns {'domains': {name: scores}, 'miou': average, ...} (or
  {'stopped_at': step} after SIGTERM / SIGINT)."""
  return MultiDomainTrainer(config, workdir).run()


def evaluate_checkpoint(config, workdir: str, domain: str | None = None) -> dict:
  """`--mode=eval`: every evaluation split of every domain (or of `domain`), a table and
  `eval_<domain>_<split>.json` each, then the average mIoU over the domains' reported
  splits (Tables 2-3). Returns {'domains': {name: {split: scores}}, 'miou': average}."""
  if domain is not None:
    domain_config(config, domain)  # an unknown name stops here
  trainer = MultiDomainTrainer(config, workdir)
  results = trainer.evaluate_checkpoint(None if domain is None else {domain})
  reported = {name: splits[data_factory.eval_splits(trainer.targets[name].data)[-1]]
              for name, splits in results.items()}
  average = train.average_scores(reported)['miou']
  if jax.process_index() == 0:
    print(f'average mIoU over {", ".join(f"{n} {s["split"]}" for n, s in reported.items())}: '
          f'{100 * average:.1f}')
  return {'domains': results, 'miou': average}
