"""What speed.py and gpu_check.py both need to time a train step: random inputs, a median
of wall times, and the model's FLOPs as written. No flags: both scripts import it."""

import math
import statistics
import time

import jax
import jax.extend as jex
import numpy as np

from cct_jax import parallel


def median_seconds(fn, warmup: int, repeats: int) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def jaxpr_flops(jaxpr) -> float:
  """The multiply-adds (x2) of every convolution and matmul in a jaxpr, sub-jaxprs
  included: the model's own FLOPs as written, before XLA's rewrites."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape
      rhs_spec = eqn.params['dimension_numbers'].rhs_spec
      taps = math.prod(rhs[d] for d in rhs_spec[2:]) * rhs[rhs_spec[1]]
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * taps
    elif name == 'dot_general':
      (contracting, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        if isinstance(sub, (jex.core.Jaxpr, jex.core.ClosedJaxpr)):
          total += jaxpr_flops(getattr(sub, 'jaxpr', sub))
  return total


def random_batches(rng, mesh, batch: int, size: int, num_classes: int) -> tuple[dict, dict]:
  """A labelled and an unlabelled batch of `batch` random `size` x `size` images (labels too),
  sharded over `mesh`: random, not zeros, which can run faster than real data."""
  sharded = parallel.batch_sharded(mesh)
  labelled = jax.device_put({
      'image': rng.normal(size=(batch, size, size, 3)).astype(np.float32),
      'mask': rng.integers(0, num_classes, (batch, size, size)).astype(np.int32)}, sharded)
  unlabelled = jax.device_put(
      {'image': rng.normal(size=(batch, size, size, 3)).astype(np.float32)}, sharded)
  return labelled, unlabelled
