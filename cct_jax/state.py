"""The train state every run keeps, how it is born, and how a finished run's is read back.

A state holds the model's parameters and BatchNorm statistics, the optimiser, and `extra`:
the training method's own state beside the model (Mean Teacher's teacher; {} for most,
methods/__init__.py). It is created replicated on the mesh, so a donated step can update
it in place on every device.
"""

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from etils import epath
from flax.training import train_state

from cct_jax import checkpointing, errors, parallel
from cct_jax.models import pretrained

# The independent random streams of `config.seed`, each a fold_in of the seed's key, so that
# none shifts another: the network's initial weights, the train step's per-step keys, and
# the image classifier's initial weights (weak supervision, classify.py).
SEED_STREAMS = {'init': 0, 'train_step': 1, 'classifier_init': 2}


def seed_stream(seed: int, name: str) -> jax.Array:
  """The key of stream `name` (a key of SEED_STREAMS) of `seed`."""
  return jax.random.fold_in(jax.random.key(seed), SEED_STREAMS[name])


class TrainState(train_state.TrainState):
  batch_stats: Any
  extra: Any


def variables(state: TrainState) -> dict:
  return {'params': state.params, 'batch_stats': state.batch_stats}


def initial(apply_fn: Callable, init_variables: Callable[[jax.Array], dict], tx, key,
            init_extra: Callable[[dict], dict] = lambda variables: {}) -> TrainState:
  """`init_variables(key)` -> {'params', 'batch_stats'} with the optimiser `tx` and the
  method's `init_extra`: a pure function, so `jax.eval_shape` gives the state's shapes."""
  variables_ = init_variables(key)
  state = TrainState.create(apply_fn=apply_fn, params=variables_['params'],
                            batch_stats=variables_['batch_stats'], tx=tx,
                            extra=init_extra(variables_))
  # flax starts the step as a Python 0, which jit makes a weak-typed int32; a restored
  # checkpoint's step is strongly typed. Both kinds would be separate programs: the final
  # report's evaluation of the restored best state compiled every evaluation step again.
  return state.replace(step=jnp.zeros((), jnp.int32))


def create(apply_fn: Callable, init_variables: Callable[[jax.Array], dict], tx, key, mesh,
           init_extra: Callable[[dict], dict] = lambda variables: {}) -> TrainState:
  """`initial`, born replicated on `mesh`."""
  init = lambda key: initial(apply_fn, init_variables, tx, key, init_extra)
  return jax.jit(init, out_shardings=parallel.replicated(mesh))(key)


def _with_encoder(state: TrainState, encoder: dict, mesh,
                  init_extra: Callable[[dict], dict]) -> TrainState:
  """`state` with `encoder` ({'params', 'batch_stats'} of the 'encoder' subtree) in place,
  the optimiser and the method's state started afresh from it."""
  params = dict(state.params, encoder=encoder['params'])
  stats = dict(state.batch_stats, encoder=encoder['batch_stats'])
  state = state.replace(params=params, batch_stats=stats, opt_state=state.tx.init(params),
                        extra=init_extra({'params': params, 'batch_stats': stats}))
  return jax.device_put(state, parallel.replicated(mesh))


def with_pretrained_trunk(state: TrainState, model_cfg, mesh,
                          init_extra: Callable[[dict], dict] = lambda variables: {}):
  """`state` with the ImageNet trunk of `model_cfg.pretrained` (a converted .npz) when it
  names one, for any model whose encoder sits under 'encoder' (the segmentation network,
  the classifier of sec. 3.3)."""
  path = pretrained.weights_file(model_cfg)
  if path is None:
    return state
  params, batch_stats = pretrained.with_trunk_weights(
      jax.device_get(state.params), jax.device_get(state.batch_stats), path, model_cfg.stem)
  return _with_encoder(state, {'params': params['encoder'],
                               'batch_stats': batch_stats['encoder']}, mesh, init_extra)


def with_encoder_from(state: TrainState, run_dir: str, mesh,
                      init_extra: Callable[[dict], dict] = lambda variables: {}):
  """`state` with the encoder of a classification pre-training run (sec. 3.3)."""
  saved = checkpointing.restore_arrays(os.path.join(run_dir, 'checkpoints'))
  if 'psp' not in saved['params']['encoder']:
    raise errors.UserError(f"{run_dir}: a classifier of the trunk alone "
                           "(weak.classifier='irn'), not CCT's encoder: its CAMs make the "
                           'pseudo-labels, and the segmentation run starts from ImageNet '
                           '(model.pretrained) as the authors\' did; drop model.encoder_from')
  encoder = {'params': saved['params']['encoder'],
             'batch_stats': saved['batch_stats']['encoder']}
  expected = {'params': state.params['encoder'], 'batch_stats': state.batch_stats['encoder']}
  shapes = lambda tree: jax.tree_util.tree_map_with_path(
      lambda path, x: (jax.tree_util.keystr(path), x.shape), tree)
  if jax.tree.leaves(shapes(encoder)) != jax.tree.leaves(shapes(expected)):
    raise errors.UserError(f'{run_dir}: its encoder does not match config.model '
                           '(pre-trained with another model config?)')
  return _with_encoder(state, encoder, mesh, init_extra)


# Where a run keeps checkpoints, in the order a restore looks: the best, then the latest.
CHECKPOINT_DIRS = ('best', 'checkpoints')


def kept_steps(workdir: str) -> dict[str, list[int]]:
  """{'best' / 'checkpoints': the steps kept there}, for those of the two in `workdir`."""
  kept = {}
  for name in CHECKPOINT_DIRS:
    directory = os.path.join(workdir, name)
    if epath.Path(directory).is_dir():
      kept[name] = sorted(checkpointing.manager(directory).all_steps())
  return kept


def checkpoint_to_restore(workdir: str, step: int | None = None) -> str:
  """The folder of `workdir` that keeps the checkpoint a restore reads: the best, else the
  latest; or `step`, wherever it is kept. Raises NoCheckpointError, saying what is kept,
  where there is none. Cheap: eval and predict can call it before they build the state to
  restore into (seconds of compiling on a CPU)."""
  kept = kept_steps(workdir)
  for name, steps in kept.items():
    if steps and (step is None or step in steps):
      return os.path.join(workdir, name)
  raise errors.NoCheckpointError(missing_checkpoint_message(workdir, kept, step))


def missing_checkpoint_message(workdir: str, kept: dict[str, list[int]],
                               step: int | None) -> str:
  """What to do when `workdir` keeps no checkpoint of `step` (None: none at all)."""
  listed = '; '.join(f'{name}/ {", ".join(map(str, steps))}'
                     for name, steps in kept.items() if steps)
  if step is not None and listed:
    return f'no checkpoint of step {step} in {workdir}; the steps kept: {listed}'
  what = 'no checkpoint' + ('' if step is None else f' (of step {step} or any other)')
  return (f'{what} in {workdir} (in best/ or checkpoints/): train first (--mode=train), or '
          'point --workdir at a trained run')


def restore_best_or_latest(state: TrainState, workdir: str,
                           step: int | None = None) -> TrainState:
  """The state shaped like `state` in the best checkpoint in `workdir`, else the latest;
  or the checkpoint of `step`, wherever it is kept."""
  directory = checkpoint_to_restore(workdir, step)
  abstract_state = checkpointing.abstract_with_sharding(
      state, parallel.replicated(parallel.data_mesh()))
  restored = checkpointing.restore(checkpointing.manager(directory), abstract_state, step)
  logging.info('restored step %d from %s', int(restored.step), directory)
  return restored
