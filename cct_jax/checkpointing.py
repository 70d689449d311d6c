"""Every orbax call of the project lives here (DESIGN.md).

A checkpoint holds the train state (and, for the best checkpoint, the metrics it was kept
for). The data streams need no state of their own: they are random-access and rebuilt at
the restored step (`pipeline.make_train_streams(start_step=...)`), which is exact for any
number of workers, processes or devices. Restore targets are abstract (`jax.eval_shape`)
and carry the current mesh's shardings, so a checkpoint written on 4 devices restores
onto 1.
"""

import functools
import logging
import os

import jax
import orbax.checkpoint as ocp

from cct_jax import errors


@functools.cache
def _one_writer_per_array_on_cpu() -> None:
  """orbax has each replica of a replicated array write a slice of it (replica-parallel
  saving), cutting the slices with eager ops, one small compile per shape: on CPU devices,
  which share one host's memory, that costs every save seconds for nothing (measured:
  benchmarks/results/design_measurements.json). orbax turns it off on GPUs itself."""
  if jax.default_backend() != 'cpu':
    return
  # orbax warns (through absl's logger) that it replaces a handler: meant, so not shown.
  absl_logger = logging.getLogger('absl')
  was_disabled, absl_logger.disabled = absl_logger.disabled, True
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
  finally:
    absl_logger.disabled = was_disabled


def manager(directory: str, max_to_keep: int | None = 2) -> ocp.CheckpointManager:
  _one_writer_per_array_on_cpu()
  # Synchronous saves: a run stopped right after a save has it on disk, complete.
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  # A bucket (gs://...) is written by orbax and tensorstore directly, every process its
  # part, with commit markers in place of renames.
  directory = str(directory)
  path = directory if '://' in directory else os.path.abspath(directory)
  return ocp.CheckpointManager(path, options=options)


def latest_step(mngr: ocp.CheckpointManager) -> int | None:
  return mngr.latest_step()


def save(mngr: ocp.CheckpointManager, step: int, state, metrics: dict | None = None) -> None:
  items = dict(state=ocp.args.StandardSave(state))
  if metrics is not None:
    items['metrics'] = ocp.args.JsonSave(metrics)
  mngr.save(step, args=ocp.args.Composite(**items), force=True)
  mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """The state of `step` (default: the latest), laid out as `abstract_state` says.

  `abstract_state` is a tree of `jax.ShapeDtypeStruct`s with shardings: the restored
  arrays are placed for the current mesh, whatever mesh wrote them.
  """
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise errors.NoCheckpointError(f'no checkpoint in {mngr.directory}')
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored['state']


def restore_arrays(directory: str) -> dict:
  """The latest state in `directory` as a plain tree of host arrays, without a restore
  target: for taking weights out of another kind of run (the encoder of a classifier)."""
  mngr = manager(directory, max_to_keep=None)
  step = mngr.latest_step()
  if step is None:
    raise errors.NoCheckpointError(f'no checkpoint in {mngr.directory}')
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return jax.device_get(restored['state'])


def saved_metrics(mngr: ocp.CheckpointManager, step: int) -> dict:
  """The metrics saved with `step` (e.g. the val mIoU of a best checkpoint)."""
  return mngr.restore(step, args=ocp.args.Composite(metrics=ocp.args.JsonRestore()))['metrics']


def abstract_with_sharding(tree, sharding):
  """Shape/dtype structs of `tree` placed with `sharding`: a restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
