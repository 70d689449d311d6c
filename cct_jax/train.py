"""The segmentation runs: `train_and_evaluate(config, workdir)` (paper sec. 3.2; with
`domains`, sec. 3.4's alternating domains) and `evaluate_checkpoint` (`--mode=eval`).

One iteration is one labelled and, when the method uses them, one unlabelled batch. The
labelled batch trains the encoder and main decoder with L_s; the unlabelled batch goes
through the encoder in a separate pass (its own BN statistics, as the authors' code,
github.com/yassouali/CCT) and trains what the method's term trains, weighted by the ramp
w_u(t) (Eq. 3). `train.mode` picks the method (methods/). A multi-domain run trains domain
t mod D at iteration t, on that domain's own streams (multidomain.py).

The pieces: what the run is (segmentation.py: network, method, targets, scoring), the loop
(loop.py: checkpoints, resume, stops, model selection) and CCT's step (train_step.py, which
imports no data library so that the step runs where they are absent).
"""

import contextlib
import os

import jax
import numpy as np
from absl import logging

from cct_jax import (evaluate, loop, multidomain, parallel, progress, segmentation,
                     train_step)
from cct_jax.data import factory as data_factory, pipeline as data_pipeline
from cct_jax.writers import MetricWriter


def total_steps(config, num_unlabelled: int) -> int:
  """`train.num_steps`, or `train.num_epochs` passes over the unlabelled set."""
  if config.train.num_steps > 0:
    return config.train.num_steps
  steps_per_epoch = -(-num_unlabelled // config.data.batch_size_unlabelled)
  return config.train.num_epochs * steps_per_epoch


def run_length(task: segmentation.Segmentation) -> int:
  """The run's iterations: `train.num_steps`, or `train.num_epochs` passes over the
  unlabelled set; with several domains, D x the iterations of the domain that needs most,
  so that every domain makes its passes."""
  if task.config.train.num_steps > 0:
    return task.config.train.num_steps
  per_target = [total_steps(view, len(data_factory.make_source(view.data, 'train_unlabelled')))
                for view in task.targets.values()]
  return len(per_target) * max(per_target)


def open_streams(task: segmentation.Segmentation, first_step: int) -> dict:
  """Each target's (labelled, unlabelled) streams, positioned after `first_step`
  iterations: the streams are random-access, so the step alone says where they stand and
  resuming works with any number of workers, processes or devices."""
  streams = {}
  for index, (target, view) in enumerate(task.targets.items()):
    logging.info('%slabelled images: %s', f'{target} ' if target else '',
                 data_factory.split_rule(view.data))
    data = view.data
    if not task.method.unlabelled_keys(data):
      # No unlabelled stream, no epochs of it to replay within: the authors' supervised
      # trainer iterates over the labelled loader alone.
      data = data.copy_and_resolve_references()
      data.labelled_replay = False
    streams[target] = data_pipeline.make_train_streams(
        data, device_count=jax.device_count(), process_index=jax.process_index(),
        process_count=jax.process_count(),
        start_step=multidomain.domain_steps_done(first_step, index, len(task.targets)))
  return streams


def draw(task: segmentation.Segmentation, streams, data_cfg) -> tuple[dict, dict | None, float]:
  """The global (labelled, unlabelled) batches of one step from `streams`, and the seconds
  spent waiting for them."""
  host, waited = progress.timed_next(streams.labelled)
  labelled = parallel.global_batch(task.mesh, {k: host[k] for k in ('image', 'mask')})
  keys = task.method.unlabelled_keys(data_cfg)
  unlabelled = None
  if keys:
    host, waited_unlabelled = progress.timed_next(streams.unlabelled)
    waited += waited_unlabelled
    unlabelled = parallel.global_batch(task.mesh, {k: host[k] for k in keys})
  return labelled, unlabelled, waited


def batch_sizes(task: segmentation.Segmentation) -> tuple[float, float]:
  """(labelled, unlabelled) images of a step, averaged over the domains."""
  views = task.targets.values()
  return (float(np.mean([v.data.batch_size_labelled for v in views])),
          task.method.uses_unlabelled * float(np.mean([v.data.batch_size_unlabelled
                                                       for v in views])))


def log_start(task: segmentation.Segmentation, first_step: int, num_steps: int) -> None:
  """Where the run runs and on what, before the silence of the first compile."""
  devices = jax.devices()
  labelled, unlabelled = batch_sizes(task)
  per_device = f'{labelled / len(devices):g}' + (
      f' + {unlabelled / len(devices):g}' if unlabelled else '')
  logging.info('%s: %d %s device(s) over %d process(es); steps %d -> %d of %g%s images '
               '(%s per device)', jax.default_backend(), len(devices), devices[0].device_kind,
               jax.process_count(), first_step, num_steps, labelled,
               f' + {unlabelled:g}' if unlabelled else '', per_device)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains, evaluates on val every `train.eval_every` steps (the best checkpoint by val
  mIoU, averaged over the domains, kept apart from the latest), then scores the best
  checkpoint on the reported split of the dataset (or of every domain). Resumes from
  `workdir` when it holds a checkpoint. Returns the final results (a multi-domain run's:
  {'domains': {name: scores}, 'miou': average, ...}; after SIGTERM / SIGINT,
  {'stopped_at': step})."""
  task = segmentation.build(config)
  num_steps = run_length(task)
  writer, checkpoints, state = loop.open_run(
      config, workdir, lambda starting_weights: task.create_state(num_steps, starting_weights),
      mesh=task.mesh, max_checkpoints=config.train.max_checkpoints)

  log_start(task, int(state.step), num_steps)
  streams = open_streams(task, int(state.step))
  step_fns = {target: train_step.jit_train_step(task.train_step(target, num_steps), task.mesh,
                                                task.method.uses_unlabelled)
              for target in task.targets}
  names = tuple(task.targets)

  def train_one(state, step):
    target = names[step % len(names)]
    labelled, unlabelled, waited = draw(task, streams[target], task.targets[target].data)
    writer.add_input_wait(waited)
    state, metrics = step_fns[target](state, labelled, unlabelled)
    if task.multi_domain:
      metrics = {f'{k}/{target}': v for k, v in metrics.items()}
    return state, metrics

  evaluator = segmentation.Evaluator(task)
  num_pictures = config.train.num_pictures
  with contextlib.ExitStack() as stack:
    for target_streams in streams.values():
      stack.callback(target_streams.close)
    state, stopped = loop.train_loop(
        state, num_steps=num_steps, train_one=train_one,
        evaluate=lambda state, step: evaluator.select(state, step, writer, num_pictures),
        checkpoints=checkpoints, writer=writer, every=loop.Intervals.of(config.train),
        images_per_step=sum(batch_sizes(task)),
        profiler=loop.StepProfiler(loop.profile_window(config.train.profile_steps),
                                   os.path.join(workdir, 'profile')))
  return loop.finish(state, stopped, checkpoints=checkpoints, writer=writer,
                     report=lambda state: evaluator.report(state, writer, num_pictures))


def evaluate_checkpoint(config, workdir: str, *, domain: str | None = None,
                        step: int | None = None) -> dict:
  """`--mode=eval`: the best checkpoint in `workdir` (or that of `step`) scored on every
  evaluation split with the configured inference (`config.eval`: scales, flip, sliding
  window), of every domain (or of `domain`); a table and eval_[<domain>_]<split>.json
  each, which name the step scored. Returns {split: scores}; for a multi-domain config
  {'domains': {name: {split: scores}}, 'miou': the average over the domains' reported
  splits}."""
  task = segmentation.build(config)
  if domain is not None:
    multidomain.domain_config(config, domain)  # an unknown name stops here
  state = task.restore(workdir, purpose='eval', step=step)
  scored_step = int(state.step)
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  evaluator = segmentation.Evaluator(task)
  results = {}
  for target, view in task.targets.items():
    if domain is not None and target != domain:
      continue
    for split in data_factory.eval_splits(view.data):
      scores, _ = evaluator.score(target, state, split)
      scores.update(split=split, step=scored_step, scales=list(view.eval.scales),
                    flip=view.eval.flip)
      name = split if target is None else f'{target}_{split}'
      path = writer.write_json(f'eval_{name}.json', scores)
      if writer.enabled:  # process 0
        print(f'{name.replace("_", " ")} (step {scored_step}), written to {path}:\n'
              f'{evaluate.format_table(scores)}')
      results.setdefault(target, {})[split] = scores
  writer.close()
  if not task.multi_domain:
    return results[None]
  reported = {name: splits[data_factory.eval_splits(task.targets[name].data)[-1]]
              for name, splits in results.items()}
  average = segmentation.average_scores(reported)['miou']
  if writer.enabled:
    print(f'average mIoU over {", ".join(f"{n} {s["split"]}" for n, s in reported.items())}: '
          f'{100 * average:.1f}')
  return {'domains': results, 'miou': average}
