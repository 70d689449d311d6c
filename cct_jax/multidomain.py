"""CCT on several domains (paper sec. 3.4, Tables 2-3; App. E, Eq. 11-12; SPEC 5):
`train_and_evaluate(config, workdir)` for a config with `domains`.

One shared encoder; per domain a main decoder and K auxiliary decoders for its own classes
(`models.MultiDomainCCT`). Iterations alternate between the domains (in the sorted order of
their names, as ConfigDict keeps them): iteration t trains domain t mod D on an equal
labelled + unlabelled batch from that domain's own pair of streams, with the single-domain
step and loss of Eq. (3) (`train.make_train_step` on the domain's view of the config), so
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
average the domains' statistics and fit neither at evaluation (on tex5 + fashion5 after 600
iterations, val mIoU with the eval batch's own statistics instead: tex5 26.7 -> 55.7,
fashion5 17.7 -> 24.1). `domain_batch_stats=True` (not in the paper) keeps one set of
running statistics per domain; parameters stay shared.

A config has `domains` (name -> a full data config, whose `num_classes` sizes that domain's
decoders) in place of `data` and `model.num_classes` (`defaults.multi_domain`); the rest is
shared. Evaluation scores every domain on its own splits; the best checkpoint is the one
with the best average val mIoU over the domains, and the final results are each domain's
reported split and their average, as Tables 2-3.
"""


import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from cct_jax import checkpointing, evaluate, models, parallel, train
from cct_jax.data import factory as data_factory
from cct_jax.models.multidomain import decoders_key
from cct_jax.writers import MetricWriter


def default_adversarial_config() -> ml_collections.ConfigDict:
  """App. E: off by default (it hurt in the paper's Table 7); lambda_adv = 2e-2."""
  return ml_collections.ConfigDict(dict(enabled=False, weight=2e-2))


# Whether each domain keeps its own BN running statistics of the shared encoder (not in the
# paper): with one set, the statistics mix the domains and fit neither at evaluation.
DOMAIN_BATCH_STATS = False


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


def model_from_config(config) -> models.MultiDomainCCT:
  weight = config.adversarial.weight if config.adversarial.enabled else 0.0
  return models.MultiDomainCCT(
      num_classes={name: config.domains[name].num_classes for name in domain_names(config)},
      encoder=models.encoder_from_config(config.model), aux_counts=train.aux_counts(config),
      final_relu=config.model.decoder_final_relu, decoder_width=config.model.decoder_width,
      adversarial_weight=weight)


def total_steps(config) -> int:
  """`train.num_steps` iterations in all, or `train.num_epochs` passes over the largest
  unlabelled set for every domain: D x the iterations of the domain that needs most."""
  if config.train.num_steps > 0:
    return config.train.num_steps
  per_domain = []
  for name in domain_names(config):
    view = domain_config(config, name)
    num_unlabelled = len(data_factory.make_source(view.data, 'train_unlabelled'))
    per_domain.append(train.total_steps(view, num_unlabelled))
  return len(per_domain) * max(per_domain)


def create_train_state(config, model: models.MultiDomainCCT, num_steps: int, mesh):
  """The single-domain initial state; with `domain_batch_stats`, one copy of the encoder's
  BN running statistics per domain, which only that domain's steps update and only its
  evaluation reads."""
  state = train.create_train_state(config, model, num_steps, mesh)
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


def make_predict_fn(config, model: models.MultiDomainCCT, domain: str):
  """(state, images) -> `domain`'s class probabilities, with the configured inference."""
  predict = train.make_predict_fn(domain_config(config, domain), model.clone(domain=domain))
  return lambda state, images: predict(domain_state(config, state, domain), images)


def domain_steps_done(step: int, index: int, num_domains: int) -> int:
  """How many of the first `step` iterations trained domain `index` (t mod D == index):
  where that domain's data streams resume."""
  return (step - index + num_domains - 1) // num_domains


def keep_subtrees(new, old, keys: set[str]):
  """`new`, with every leaf below a dict key in `keys` taken from `old` (the same tree
  structure; params, batch statistics and the optimiser state alike)."""

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
  step_fn = train.make_train_step(domain_config(config, domain), model.clone(domain=domain),
                                  num_steps)
  others = {decoders_key(name) for name in domain_names(config) if name != domain}

  def domain_step(state, labelled, unlabelled):
    new_state, metrics = step_fn(domain_state(config, state, domain), labelled, unlabelled)
    if config.domain_batch_stats:
      new_state = new_state.replace(batch_stats={**state.batch_stats,
                                                 domain: new_state.batch_stats})
    return keep_subtrees(new_state, state, others), metrics

  return domain_step


def evaluate_domains(views: dict, state, predict_fns: dict, datasets: dict, mesh,
                     num_samples: int = 0) -> tuple[dict, dict]:
  """Every domain scored on its dataset in `datasets`, and the averages over domains.

  Returns ({'domains': {name: scores}, 'miou': average, 'pixel_accuracy': average},
  {name: samples}).
  """
  scores, samples = {}, {}
  for name, dataset in datasets.items():
    scores[name], samples[name] = train.evaluate_split(
        views[name], state, predict_fns[name], dataset, mesh, num_samples=num_samples)
  results = {'domains': scores,
             'miou': float(np.mean([s['miou'] for s in scores.values()])),
             'pixel_accuracy': float(np.mean([s['pixel_accuracy'] for s in scores.values()]))}
  return results, samples


def write_domain_evaluation(views, writer, step: int, splits: dict, results: dict,
                            samples: dict) -> None:
  """Scalars (`<domain>/<split>/miou`, and `average/<splits>/miou` over the domains) and
  each domain's picture."""
  for name, scores in results['domains'].items():
    writer.write_eval(step, f'{name}/{splits[name]}', scores)
    train.save_prediction_panel(views[name], writer, f'{splits[name]}_{name}', step,
                                samples[name])
  writer.write_eval(step, f'average/{"+".join(sorted(set(splits.values())))}', results)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains with alternating domains, evaluates every domain's first evaluation split every
  `train.eval_every` iterations (the best checkpoint by the average mIoU kept apart),
  then scores the best checkpoint on every domain's reported split. Resumes from
  `workdir`. Returns {'domains': {name: scores}, 'miou': average, ...} (or
  {'stopped_at': step} after SIGTERM / SIGINT)."""
  check_config(config)
  names = domain_names(config)
  views = {name: domain_config(config, name) for name in names}
  # Logging.
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  writer.write_config(config)

  # Mesh and input: per domain, the split for model selection and the reported one.
  mesh = parallel.data_mesh()
  splits = {name: data_factory.eval_splits(views[name].data) for name in names}
  select_split = {name: splits[name][0] for name in names}
  report_split = {name: splits[name][-1] for name in names}

  def eval_datasets(split_of):
    return {name: data_factory.make_eval_dataset(
        views[name].data, split_of[name], process_index=jax.process_index(),
        process_count=jax.process_count()) for name in names}

  select_sets = eval_datasets(select_split)
  num_steps = total_steps(config)

  # Model, state and one step per domain.
  model = model_from_config(config)
  state = create_train_state(config, model, num_steps, mesh)
  rep, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  semi = config.train.mode == 'semi'
  train_steps = {name: jax.jit(make_domain_step(config, model, name, num_steps),
                               in_shardings=(rep, batch, batch if semi else None),
                               out_shardings=(rep, rep), donate_argnums=0)
                 for name in names}
  predict_fns = {name: make_predict_fn(config, model, name) for name in names}

  # Checkpoints: resume from the latest; the best by average val mIoU lives apart.
  state, latest, best, abstract_state, last_good = train.open_checkpoints(
      config.train, workdir, state, rep)
  # Random-access streams: each domain's resume at the iterations it has trained.
  first_step = int(state.step)
  streams = {name: data_factory.make_train_streams(
      views[name].data, device_count=jax.device_count(), process_index=jax.process_index(),
      process_count=jax.process_count(),
      start_step=domain_steps_done(first_step, index, len(names)))
             for index, name in enumerate(names)}
  def train_one(state, step):
    name = names[step % len(names)]
    labelled = next(streams[name].labelled)
    labelled = parallel.global_batch(mesh, {'image': labelled['image'],
                                            'mask': labelled['mask']})
    unlabelled = None
    if semi:
      unlabelled = parallel.global_batch(mesh,
                                         {'image': next(streams[name].unlabelled)['image']})
    state, metrics = train_steps[name](state, labelled, unlabelled)
    return state, {f'{k}/{name}': v for k, v in metrics.items()}

  def select(state, step):
    results, samples = evaluate_domains(views, state, predict_fns, select_sets, mesh,
                                        num_samples=config.train.num_pictures)
    write_domain_evaluation(views, writer, step, select_split, results, samples)
    return results['miou']

  images_per_step = (np.mean([v.data.batch_size_labelled for v in views.values()]) +
                     semi * np.mean([v.data.batch_size_unlabelled for v in views.values()]))
  state, stopped = train.training_loop(config.train, writer, state, num_steps, train_one,
                                       select, latest, best, last_good, images_per_step)
  for domain_streams in streams.values():
    domain_streams.close()
  if stopped:
    writer.close()
    return {'stopped_at': int(state.step)}

  # The best checkpoint (selected on the average val mIoU) scored on the reported splits.
  if best.latest_step() is not None:
    state = checkpointing.restore(best, abstract_state)
  step = int(state.step)
  results, samples = evaluate_domains(views, state, predict_fns, eval_datasets(report_split),
                                      mesh, num_samples=config.train.num_pictures)
  write_domain_evaluation(views, writer, step, report_split, results, samples)
  for name, scores in results['domains'].items():
    scores['split'] = report_split[name]
    logging.info('%s %s scores of the best checkpoint (step %d):\n%s', name,
                 report_split[name], step, evaluate.format_table(scores))
  results['step'] = step
  path = writer.write_json('results.json', results)
  logging.info('average mIoU over %s: %.1f (step %d), written to %s', ', '.join(names),
               100 * results['miou'], step, path)
  writer.close()
  return results


def restore_for_inference(config, workdir: str, domain: str | None):
  """(domain's config view, the model running `domain`'s decoders, state) of the best
  checkpoint in `workdir` (else the latest), for eval and prediction."""
  if domain is None:
    raise ValueError("a multi-domain model predicts with one domain's decoders: pass "
                     f'--domain, one of {domain_names(config)}')
  model = model_from_config(config)
  state = train.restore_best_or_latest(_inference_template(config, model), workdir)
  return (domain_config(config, domain), model.clone(domain=domain),
          domain_state(config, state, domain))


def _inference_template(config, model):
  return create_train_state(config, model, max(config.train.num_steps, 1),
                            parallel.data_mesh())


def evaluate_checkpoint(config, workdir: str, domain: str | None = None) -> dict:
  """`--mode=eval`: every evaluation split of every domain (or of `domain`), a table and
  `eval_<domain>_<split>.json` each, then the average mIoU over the domains' reported
  splits (Tables 2-3). Returns {'domains': {name: {split: scores}}, 'miou': average}."""
  names = domain_names(config) if domain is None else (domain,)
  model = model_from_config(config)
  state = train.restore_best_or_latest(_inference_template(config, model), workdir)
  mesh = parallel.data_mesh()
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  all_results = {}
  for name in names:
    view = domain_config(config, name)
    predict_fn = make_predict_fn(config, model, name)
    for split in data_factory.eval_splits(view.data):
      dataset = data_factory.make_eval_dataset(view.data, split,
                                               process_index=jax.process_index(),
                                               process_count=jax.process_count())
      results, _ = train.evaluate_split(view, state, predict_fn, dataset, mesh)
      results.update(domain=name, split=split, step=int(state.step),
                     scales=list(view.eval.scales), flip=view.eval.flip)
      path = writer.write_json(f'eval_{name}_{split}.json', results)
      if writer.enabled:  # process 0
        print(f'{name} {split} (step {int(state.step)}), written to {path}:\n'
              f'{evaluate.format_table(results)}')
      all_results.setdefault(name, {})[split] = results
  reported = {name: data_factory.eval_splits(config.domains[name])[-1] for name in names}
  average = float(np.mean([all_results[name][split]['miou']
                           for name, split in reported.items()]))
  if writer.enabled:
    print(f'average mIoU over {", ".join(f"{n} {s}" for n, s in reported.items())}: '
          f'{100 * average:.1f}')
  writer.close()
  return {'domains': all_results, 'miou': average}
