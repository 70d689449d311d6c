"""Model-free: two processes deadlock when one runs a program read from jax's persistent
compilation cache and the other the same program compiled afresh (jax 0.12.1, gloo).

No project code. Two processes of 2 CPU devices each run a jitted program whose result is
summed over all 4 devices (one cross-process all-reduce), five times, then clear jax's
in-memory caches and do it again, three rounds. Two scenarios, each in its own cache folder:

  shared: both processes use one cache folder. Process 0 writes every program it compiles
          there (jax writes from process 0 only); in the second round it reads the program
          back, process 1 reads it too.
  mixed:  only process 0 has the cache (a host's own ~/.cache: process 1 never finds what
          process 0 wrote), filled beforehand, so process 0 runs the executable read from
          the cache and process 1 one it compiles.

Each process logs the run id XLA gives each execution (its collectives' RendezvousKey;
`TF_CPP_VMODULE=collective_thunk=3`). jax derives it from the executable's fingerprint,
which for a program this size differs between a compiled executable and one deserialized
from the cache. Prints, per scenario, whether the rounds finished and the run ids of each
process's first execution per round. README, "Several processes", has what it showed.

  python benchmarks/multihost_cache_repro.py [--ops=400] [--timeout_s=240]
"""

import os
import re
import socket
import subprocess
import sys
import tempfile

from absl import app, flags

_OPS = flags.DEFINE_integer('ops', 400, 'Operations in the program (its size).')
_TIMEOUT = flags.DEFINE_integer('timeout_s', 240, 'Seconds after which a run is a hang.')
ROUNDS, CALLS = 3, 5

CHILD = r'''
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
process, address, cache, ops = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
if cache:
  jax.config.update('jax_compilation_cache_dir', cache)
if address:
  jax.distributed.initialize(address, 2, process)
mesh = jax.make_mesh((jax.device_count(),), ('data',))
rep, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))

def program(total, x):
  for i in range(ops):
    x = [jnp.tanh, jnp.sin, jnp.cos, jnp.exp][i % 4](x @ (jnp.eye(8) * (1 + i / 100))) / 2
  return total + jnp.sum(x)

x = jax.make_array_from_process_local_data(
    sharded, np.ones((jax.local_device_count(), 8), np.float32))
total = jax.device_put(jnp.float32(0), rep)
for round_ in range(ROUNDS):
  print('round', round_, flush=True)
  step = jax.jit(program, out_shardings=rep)
  for _ in range(CALLS):
    total = step(total, x)
  jax.block_until_ready(total)
  jax.clear_caches()
print('finished', flush=True)
'''.replace('ROUNDS', str(ROUNDS)).replace('CALLS', str(CALLS))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(process: int, address: str, cache: str, devices: int):
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES=str(devices),
             TF_CPP_MIN_LOG_LEVEL='0', TF_CPP_VMODULE='collective_thunk=3')
  return subprocess.Popen(
      [sys.executable, '-c', CHILD, str(process), address, cache, str(_OPS.value)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(processes) -> tuple[bool, list[str]]:
  """(finished, logs); a pair still running after the timeout is killed: a hang."""
  logs, finished = [], True
  for process in processes:
    try:
      logs.append(process.communicate(timeout=_TIMEOUT.value)[0])
    except subprocess.TimeoutExpired:
      finished = False
      for p in processes:
        p.kill()
      logs.append(process.communicate()[0])
  return finished and all('finished' in log for log in logs), logs


def _first_run_ids(log: str) -> list[str]:
  """The run id of the first all-reduce after each 'round' line."""
  ids, waiting = [], False
  for line in log.splitlines():
    if line.startswith('round'):
      waiting = True
    elif waiting and (found := re.search(r'run_id=RunId: (-?\d+).*global_devices=\[0, 1, 2048',
                                         line)):
      ids.append(found.group(1))
      waiting = False
  return ids


def _pair(caches: tuple[str, str]) -> tuple[bool, list[list[str]]]:
  address = f'127.0.0.1:{_free_port()}'
  finished, logs = _finish([_launch(p, address, caches[p], 2) for p in range(2)])
  return finished, [_first_run_ids(log) for log in logs]


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  print(f'jax {jax.__version__}; a program of {_OPS.value} operations, {ROUNDS} rounds')
  shared = tempfile.mkdtemp(prefix='shared_cache_')
  own = tempfile.mkdtemp(prefix='process_0_cache_')
  # Fill process 0's own cache with the program (one process of 4 devices compiles it
  # for the same 4 devices: the same cache key).
  _finish([_launch(0, '', own, 4)])
  for scenario, caches in (('shared', (shared, shared)), ('mixed', (own, ''))):
    finished, run_ids = _pair(caches)
    print(f'{scenario}: {"finished" if finished else "HUNG"}; first run id per round: '
          f'process 0 {run_ids[0]}, process 1 {run_ids[1]}')


if __name__ == '__main__':
  app.run(main)
