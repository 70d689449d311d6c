"""Test set-up: four CPU devices, so data-parallel code runs on a real mesh, and cheap
compiles. Environment variables, so that command-line subprocesses get the same."""

import os
import tempfile

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault('JAX_NUM_CPU_DEVICES', '4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# XLA's CPU optimisation passes cost far more than they save on tiny test models (about
# four times faster compiles); results stay float32-exact to the tolerances tested.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
# One compilation cache for the session: in-process runs and subprocesses that build the
# same programs compile them once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='cct_jax_cache_'))
