"""Data parallelism over a ('data',) mesh of every device on every host (DESIGN.md).

`jax.jit` with the batch sharded along 'data' and the train state replicated does what
`pmap` used to do, and BatchNorm then sees the global batch (synchronised BN for free).
"""

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P


def data_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def check_global_batch(name: str, global_batch: int) -> None:
  """The global batch must split evenly over the devices; say so before anything runs."""
  devices = jax.device_count()
  if global_batch % devices:
    raise ValueError(
        f'{name}={global_batch} does not divide over {devices} devices; use a multiple of '
        f'{devices} (e.g. {max(devices, global_batch // devices * devices)})')


def global_batch(mesh, host_batch):
  """A pytree of this host's NumPy arrays -> global arrays sharded along 'data'."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), host_batch)
