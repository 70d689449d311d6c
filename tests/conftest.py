"""Test set-up: four CPU devices, so data-parallel code runs on a real mesh, and cheap
compiles. Environment variables, so that command-line subprocesses get the same."""

import contextlib
import os
import signal
import tempfile

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault('JAX_NUM_CPU_DEVICES', '4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# XLA's CPU optimisation passes cost far more than they save on tiny test models (about
# four times faster compiles); results stay float32-exact to the tolerances tested.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
# `make test` runs several workers (and some tests start processes of their own): XLA's
# Eigen thread pool in each, as wide as the machine, only makes them contend; one thread
# per device is faster (measured: benchmarks/results/design_measurements.json).
if '--xla_cpu_multi_thread_eigen' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_cpu_multi_thread_eigen=false').lstrip()
# One compilation cache for the session: in-process runs and subprocesses (the command
# line reads CCT_COMPILATION_CACHE) that build the same programs compile them once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='cct_jax_cache_'))
os.environ.setdefault('CCT_COMPILATION_CACHE', os.environ['JAX_COMPILATION_CACHE_DIR'])

import pytest  # pylint: disable=wrong-import-position

import fakes  # pylint: disable=wrong-import-position
from cct_jax import checkpointing, defaults, parallel  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  """Fashion-MNIST in its idx format, small, for the fashion5 scenes."""
  path = tmp_path_factory.mktemp('fashion_idx')
  fakes.write_fashion_idx(str(path), num_train=60, num_test=20)
  return str(path)


@pytest.fixture
def two_domain_config(idx_dir):
  """`configs/demo_two_domains.py:smoke` on the small Fashion-MNIST of `idx_dir`."""
  config = defaults.load_config_file(os.path.join(REPO, 'configs', 'demo_two_domains.py'),
                                     'smoke')
  config.domains.fashion5.generated.idx_dir = idx_dir
  return config


@pytest.fixture
def sigterm_after_first_checkpoint(monkeypatch):
  """A context in which SIGTERM reaches a training run while the step after its first
  `checkpoints/` save draws its batch; it yields the steps saved there. The run must finish
  that step, save it and return {'stopped_at': step}."""

  @contextlib.contextmanager
  def interrupted():
    real_save, real_global_batch = checkpointing.save, parallel.global_batch
    saved, signalled = [], []

    def save(mngr, step, *args, **kwargs):
      real_save(mngr, step, *args, **kwargs)
      if os.path.basename(str(mngr.directory)) == 'checkpoints':
        saved.append(step)

    def global_batch(mesh, host_batch):
      if saved and not signalled:
        signalled.append(True)
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None), (
            'the training loop does not catch SIGTERM')
        signal.raise_signal(signal.SIGTERM)
      return real_global_batch(mesh, host_batch)

    with monkeypatch.context() as patch:
      patch.setattr(checkpointing, 'save', save)
      patch.setattr(parallel, 'global_batch', global_batch)
      yield saved
    assert signalled, 'no SIGTERM was sent: the run saved no checkpoint before its end'

  return interrupted
