"""Data parallelism over a ('data',) mesh of every device on every host (DESIGN.md).

`jax.jit` with the batch sharded along 'data' and the train state replicated does what
`pmap` used to do, and BatchNorm then sees the global batch (synchronised BN for free).

Several processes (hosts): `initialize_distributed` first, then every process runs the
same program on its own slice of the data; `global_batch` joins the host batches into one
global array, and values that must agree across processes (scores, a stop request) are
computed on global arrays or combined with `any_process`.
"""

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from cct_jax import errors


# A lost process ends the others within a minute (initialize_distributed).
HEARTBEAT_TIMEOUT_S = 60
SHUTDOWN_TIMEOUT_S = 60


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           cpu_collectives: str = 'gloo',
                           heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
                           shutdown_timeout_s: int = SHUTDOWN_TIMEOUT_S) -> None:
  """Starts jax's multi-process runtime; call it before anything touches a device.

  With no arguments jax detects the cluster itself (Cloud TPU pod slices, Slurm, Open MPI,
  ...). Elsewhere pass all three: `coordinator_address` ('host:port' of process 0, which
  listens there), `num_processes` and this process's `process_id`. On CPU the processes'
  collectives go through `cpu_collectives` (gloo).

  A process that dies (or whose host freezes) would leave the others waiting in a
  collective, holding their machines: jax's coordination service aborts every process once
  one has sent no heartbeat for `heartbeat_timeout_s` (jax's default is 100 s; heartbeats
  come from a C++ thread, so a long compile or save does not miss them), or once a process
  that exits has waited `shutdown_timeout_s` for the others in the shutdown barrier
  (default 300 s; the processes of a run end within seconds of each other). A lost process
  thus stops the others within a minute (a hung one: the watchdog, watchdog.py), and the
  same command, run again, resumes from the latest checkpoint.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise errors.UserError('pass coordinator_address, num_processes and process_id together, or '
                           'none of them (auto-detection on Cloud TPU and Slurm); got '
                           f'{coordinator_address=}, {num_processes=}, {process_id=}')
  jax.config.update('jax_cpu_collectives_implementation', cpu_collectives)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             heartbeat_timeout_seconds=heartbeat_timeout_s,
                             shutdown_timeout_seconds=shutdown_timeout_s)
  # Every process must run the same executable of a program with collectives: XLA derives
  # the collectives' run id from it. jax's persistent cache is written by process 0 alone
  # and read by all, so a program compiled again (or a host's own cache folder) mixed
  # executables read from the cache with fresh compiles, whose run ids differed under
  # jax 0.12.1: each process then waited in a different all-reduce for ever (README,
  # "Several processes").
  jax.config.update('jax_enable_compilation_cache', False)
  logging.info('process %d of %d: %d local devices, %d in all; a lost process stops every '
               'process within %d s, then the same command, run again on every host, '
               'resumes', jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), heartbeat_timeout_s)


def data_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def check_global_batch(name: str, global_batch: int, devices: int | None = None) -> None:
  """The global batch must split evenly over the devices (default: all of this run's);
  say so before anything runs."""
  devices = devices or jax.device_count()
  if global_batch % devices:
    raise errors.UserError(
        f'{name}={global_batch} does not divide over {devices} devices; use a multiple of '
        f'{devices} (e.g. {max(devices, global_batch // devices * devices)})')


def global_batch(mesh, host_batch):
  """A pytree of this host's NumPy arrays -> global arrays sharded along 'data'."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), host_batch)


def pad_host_batch(host_batch: dict, multiple: int) -> dict:
  """Zero rows appended to every array of `host_batch` up to a multiple of `multiple`
  rows; an evaluation batch's padded rows then have valid=False and are not counted."""
  rows = len(next(iter(host_batch.values())))
  pad = -rows % multiple
  if not pad:
    return host_batch
  return {k: np.concatenate([np.asarray(v), np.zeros((pad, *np.shape(v)[1:]),
                                                     np.asarray(v).dtype)])
          for k, v in host_batch.items()}


def process_local(x: jax.Array) -> np.ndarray:
  """This process's rows of an array sharded along 'data' (the inverse of `global_batch`);
  the whole array when one process holds all of it."""
  if x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(jax.device_get(x))
  shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
  return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any one (every process must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))
