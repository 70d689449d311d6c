"""Auxiliary decoders as one vmapped computation per perturbation type vs unrolled copies.

  .venv/bin/python benchmarks/aux_decoders.py [--size 321] [--batch 2]

Both variants run the same 30 decoders (the default roster 2/6/6/2/2/6/6) on the same
stacked parameters, with F-Noise standing in for every perturbation so that only the way
the decoders are laid out differs. Forward + backward (gradients for decoders and z), as in
training. Prints a table and writes benchmarks/results/aux_decoders.json. The model
(`cct_jax.models.cct.DecoderStack`) uses whichever layout wins here.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from cct_jax import perturbations
from cct_jax.models.decoders import Decoder

RESULTS = os.path.join(os.path.dirname(__file__), 'results', 'aux_decoders.json')

_SIZE = flags.DEFINE_integer('size', 321, 'Input image side.')
_BATCH = flags.DEFINE_integer('batch', 2, 'Images per step.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed steps per layout.')


def noise(z, key):
  return z * (1 + jax.random.uniform(key, (1,) + z.shape[1:], minval=-0.3, maxval=0.3))


def make_losses(decoder, counts):
  def vmapped(stacks, z, key):
    total = 0.0
    for i, (name, stack) in enumerate(stacks.items()):
      keys = jax.random.split(jax.random.fold_in(key, i), counts[name])
      out = jax.vmap(lambda p, k: decoder.apply({'params': p}, noise(z, k)))(stack, keys)
      total += jnp.mean(out**2) * counts[name]
    return total

  def unrolled(stacks, z, key):
    total = 0.0
    for i, (name, stack) in enumerate(stacks.items()):
      keys = jax.random.split(jax.random.fold_in(key, i), counts[name])
      for k in range(counts[name]):
        params = jax.tree.map(lambda a: a[k], stack)
        total += jnp.mean(decoder.apply({'params': params}, noise(z, keys[k]))**2)
    return total

  return {'vmap': vmapped, 'unrolled': unrolled}


def compile_step(loss, stacks, z, key):
  start = time.perf_counter()
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(stacks, z, key).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(stacks, z, key))  # warm-up
  return compiled, compile_s


def measure(losses, stacks, z, key, repeats):
  """Compile time and best step time of each layout; the layouts take turns, so a busy
  moment on the machine does not favour one of them."""
  compiled = {name: compile_step(loss, stacks, z, key) for name, loss in losses.items()}
  times = {name: [] for name in losses}
  for _ in range(repeats):
    for name, (step, _) in compiled.items():
      start = time.perf_counter()
      jax.block_until_ready(step(stacks, z, key))
      times[name].append(time.perf_counter() - start)
  return {name: dict(compile_s=compiled[name][1], step_s=min(times[name]),
                     median_step_s=sorted(times[name])[len(times[name]) // 2]) for name in losses}


def main(argv):
  del argv
  counts = perturbations.decoder_counts(perturbations.default_perturbation_config())
  side = (_SIZE.value - 1) // 8 + 1
  decoder = Decoder(21)
  z = jax.random.normal(jax.random.key(0), (_BATCH.value, side, side, 512))
  stacks = {
      name: jax.vmap(lambda k: decoder.init(k, z[:1])['params'])(
          jax.random.split(jax.random.key(i), n)) for i, (name, n) in enumerate(counts.items())
  }
  rows = measure(make_losses(decoder, counts), stacks, z, jax.random.key(1), _REPEATS.value)
  print(f'30 auxiliary decoders, z {z.shape}, forward + backward, {jax.device_count()} device(s)')
  print('| layout | compile (s) | best step (s) | median step (s) |\n|---|---|---|---|')
  for name, row in rows.items():
    print(f"| {name} | {row['compile_s']:.2f} | {row['step_s']:.3f} | {row['median_step_s']:.3f} |")
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, 'w') as f:
    json.dump(dict(z_shape=list(z.shape), backend=jax.default_backend(), results=rows), f, indent=2)
  print(f'wrote {RESULTS}')


if __name__ == '__main__':
  app.run(main)
