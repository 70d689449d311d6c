"""Test set-up: four CPU devices, so data-parallel code runs on a real mesh."""

import os

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault('JAX_NUM_CPU_DEVICES', '4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
