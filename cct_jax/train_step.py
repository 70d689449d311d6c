"""CCT's train step and prediction function (paper sec. 3.2): what runs on the
accelerators, written once for every run (train.py, multidomain.py) and for the
benchmarks and the TPU compile report.

This module and what it imports need none of the data libraries (grain, tensorflow-datasets)
or TensorBoard's writer, so that a machine with only jax, flax, optax and orbax runs the
step: benchmarks/gpu_check.py.
"""

import jax

from cct_jax import (errors, evaluate, losses, methods, models, parallel, schedules,
                     state as state_lib)
from cct_jax.models import cct as cct_model
from cct_jax.state import TrainState


def supervised_loss(config, logits, labels, step, num_steps):
  if config.loss.supervised == 'ab_ce':
    threshold = schedules.ab_ce_threshold(
        step, total_steps=num_steps, num_classes=config.model.num_classes,
        cap=config.loss.ab_ce.cap, ramp_fraction=config.loss.ab_ce.ramp_fraction)
    return losses.ab_cross_entropy(logits, labels, threshold)
  if config.loss.supervised == 'ce':
    return losses.cross_entropy(logits, labels)
  raise errors.UserError(
      f"loss.supervised must be 'ce' or 'ab_ce', got {config.loss.supervised!r}")


def term_weights(config, step, num_steps: int) -> dict:
  """The weight of each unsupervised term at `step`: w_u(t) for the consistency loss
  (Eq. 3), w_w(t) for L_w (the same ramp to `loss.weak_weight`), a constant for the
  pairwise loss."""
  ramp = lambda final: schedules.ramp_weight(
      step, final_weight=final, total_steps=num_steps, ramp_fraction=config.loss.ramp_fraction,
      kind=config.loss.ramp)
  return {'unsup': ramp(config.loss.unsup_weight), 'weak': ramp(config.loss.weak_weight),
          'pairwise': config.loss.pairwise_weight}


def make_train_step(config, model, method: methods.Method, num_steps: int):
  """The jitted-to-be step of `method`: (state, labelled, unlabelled) -> (state, metrics)."""
  unsup_term = method.make_term(config, model) if method.uses_unlabelled else None
  base_key = state_lib.seed_stream(config.seed, 'train_step')
  head_lr = schedules.poly_schedule(config.optim.lr, num_steps, config.optim.poly_power)

  def step_fn(state: TrainState, labelled: dict, unlabelled: dict | None):
    step = state.step
    key = jax.random.fold_in(base_key, step)

    def loss_fn(params):
      # The main logits in the decoders' sub-pixel order, the labels put in it: no
      # full-resolution map of logits is transposed (models.cct.pixel_pairing).
      (main_l, _), updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, labelled['image'], train=True,
          sub_pixel=True, mutable=['batch_stats', 'losses', cct_model.METRICS])
      labels, paired = cct_model.pixel_pairing(
          labelled['mask'], main_l.shape,
          cct_model.feature_rows(labelled['image'].shape[1], config.model.output_stride))
      loss_s = supervised_loss(config, paired(main_l), labels, step, num_steps)
      metrics = {'loss_sup': loss_s}
      total = loss_s
      batch_stats = updates['batch_stats']
      passes = [updates]
      if unsup_term is not None:
        terms, updates = unsup_term(params, batch_stats, state.extra, unlabelled, key)
        batch_stats = updates['batch_stats']
        passes.append(updates)
        weights = term_weights(config, step, num_steps)
        total = total + sum(weights[name] * value for name, value in terms.items())
        metrics.update({f'loss_{name}': value for name, value in terms.items()})
        metrics.update({f'{name}_weight': weights[name] for name in terms})
      for name, value in cct_model.sown(passes, 'losses').items():
        total = total + value
        metrics[f'loss_{name}'] = value
      metrics.update(cct_model.sown(passes))  # diagnostics: the perturbations' sizes
      metrics['loss'] = total
      return total, (batch_stats, metrics)

    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if method.update_extra is not None:
      state = state.replace(extra=method.update_extra(config, state.extra,
                                                      state_lib.variables(state)))
    lr = head_lr(step)
    metrics.update(lr=lr, lr_trunk=lr * config.optim.trunk_lr_multiplier)
    return state, metrics

  return step_fn


def make_predict_fn(config, model, method: methods.Method):
  """(state, images, sizes) -> class probabilities with the configured inference, of the
  variables `method` evaluates (Mean Teacher: its teacher). `sizes` (B, 2): each image's
  own size in a padded batch, or None."""

  def predict(state, images, sizes=None):
    variables = method.evaluated(state.extra, state_lib.variables(state))
    logits_fn = lambda x, sizes: model.apply(variables, x, train=False, sizes=sizes)[0]
    return evaluate.predict_probs(logits_fn, images, config.eval, sizes)

  return predict


def state_recipe(config, model, method: methods.Method, num_steps: int) -> tuple:
  """The arguments of `state_lib.create` (or `initial`) but the mesh, for `model`."""
  key = state_lib.seed_stream(config.seed, 'init')
  return (model.apply, lambda k: models.init_variables(model, k, (1, 64, 64, 3)),
          schedules.make_optimizer(config.optim, num_steps), key,
          method.init_extra)


def create_train_state(config, model, method: methods.Method, num_steps: int, mesh, *,
                       starting_weights: bool = True) -> TrainState:
  """The initial state, born replicated on the mesh. With `starting_weights`, a new run's:
  the encoder of a classifier run (`model.encoder_from`) or the ImageNet trunk
  (`model.pretrained`) when configured; without, the state a checkpoint is restored into."""
  apply_fn, init_variables, tx, key, init_extra = state_recipe(config, model, method,
                                                               num_steps)
  state = state_lib.create(apply_fn, init_variables, tx, key, mesh, init_extra)
  if not starting_weights:
    return state
  if config.model.encoder_from:
    return state_lib.with_encoder_from(state, config.model.encoder_from, mesh, init_extra)
  return state_lib.with_pretrained_trunk(state, config.model, mesh, init_extra)


def jit_train_step(step_fn, mesh, uses_unlabelled: bool):
  """`step_fn` jitted for `mesh`: the state replicated and donated, the batches sharded."""
  rep, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  return jax.jit(step_fn, in_shardings=(rep, batch, batch if uses_unlabelled else None),
                 out_shardings=(rep, rep), donate_argnums=0)
