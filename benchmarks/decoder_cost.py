"""Appendix L (Table 13) for cct-jax: cost of the main decoder and of each auxiliary type.

  .venv/bin/python benchmarks/decoder_cost.py [--repeats 10]

One decoder (512 -> 21 classes, batch 10) at the two sizes of the paper's table: inputs
of 96x96 and 256x128, so z of 12x12 and 32x16. Each row is one jitted step, forward and
backward (gradients for the decoder and for z): for the main decoder the supervised CE,
for an auxiliary decoder its perturbation, the decoder, and the consistency loss against
a fixed main prediction. Peak memory is XLA's compile-time estimate for the step
(`memory_analysis()`: arguments + outputs + temporaries, aliasing subtracted), not a
measured allocator peak; time is the best and the median of `--repeats` runs after one
warm-up (on a shared machine the best is the steadier number).
Prints a Markdown table and writes benchmarks/results/decoder_cost.json.
"""

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from cct_jax import losses
from cct_jax import perturbations as pt
from cct_jax.models.decoders import Decoder

RESULTS = os.path.join(os.path.dirname(__file__), 'results', 'decoder_cost.json')

_REPEATS = flags.DEFINE_integer('repeats', 10, 'Timed runs per row, after one warm-up.')

BATCH, CHANNELS, NUM_CLASSES = 10, 512, 21
INPUTS = {'96 x 96': (96, 96), '256 x 128': (256, 128)}  # H x W; z is H/8 x W/8
# The rows of Table 13, in its order.
ROWS = (('Main Decoder', None), ('DropOut', 'dropout'), ('F-Drop', 'feature_drop'),
        ('F-Noise', 'feature_noise'), ('I-VAT', 'vat'), ('I-VAT (hvp)', 'vat_hvp'),
        ('Obj-Msk', 'object_mask'), ('Con-Msk', 'context_mask'), ('G-Cutout', 'cutout'))


def blob_logits(key, height, width):
  """A main prediction with object-like regions: a coarse class map, ~half background."""
  coarse_key, fg_key = jax.random.split(key)
  coarse = (BATCH, height // 16, width // 16)
  classes = jax.random.randint(coarse_key, coarse, 1, NUM_CLASSES)
  classes = jnp.where(jax.random.bernoulli(fg_key, 0.5, coarse), classes, 0)
  classes = jnp.repeat(jnp.repeat(classes, 16, axis=1), 16, axis=2)
  return 5.0 * jax.nn.one_hot(classes, NUM_CLASSES)


def make_step(decoder, perturbation):
  """grad of the row's loss with respect to the decoder parameters and z."""

  def loss(params, z, key, main_logits, labels):
    decode = lambda z: decoder.apply({'params': params}, z)
    if perturbation is None:
      return losses.cross_entropy(decode(z), labels)
    z_tilde = perturbation(z, key, labels, decode)  # the main prediction, its argmax
    return losses.consistency_loss(decode(z_tilde)[None], main_logits)

  return jax.jit(jax.grad(loss, argnums=(0, 1)))


def peak_bytes(compiled) -> int:
  stats = compiled.memory_analysis()
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes
          + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def measure(step, args, repeats):
  compiled = step.lower(*args).compile()
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return dict(peak_mib=peak_bytes(compiled) / 2**20, best_ms=1e3 * min(times),
              median_ms=1e3 * statistics.median(times))


def main(argv):
  del argv
  cfg = pt.default_perturbation_config()
  cfg.vat.method = 'finite_difference'
  perturbations = pt.build_perturbations(cfg)
  cfg.vat.method = 'hvp'
  perturbations['vat_hvp'] = pt.build_perturbations(cfg)['vat']

  decoder = Decoder(NUM_CLASSES)
  key = jax.random.key(0)
  results = []
  for size_name, (height, width) in INPUTS.items():
    z_shape = (BATCH, height // 8, width // 8, CHANNELS)
    z = jax.nn.relu(jax.random.normal(jax.random.fold_in(key, 1), z_shape))
    params = decoder.init(jax.random.fold_in(key, 2), z[:1])['params']
    main_logits = blob_logits(jax.random.fold_in(key, 3), height, width)
    labels = jnp.argmax(main_logits, axis=-1)
    inputs = (params, z, jax.random.fold_in(key, 4), main_logits, labels)
    for row_name, perturbation in ROWS:
      step = make_step(decoder, perturbations.get(perturbation))
      row = dict(decoder=row_name, input=size_name, z_shape=list(z_shape),
                 **measure(step, inputs, _REPEATS.value))
      results.append(row)
      print(f"  {size_name:>9} {row_name:<13} {row['peak_mib']:8.1f} MiB "
            f"{row['best_ms']:8.2f} ms", flush=True)

  device = jax.devices()[0].device_kind
  print(f'\nForward + backward of one decoder, batch {BATCH}, z with {CHANNELS} channels, '
        f'{NUM_CLASSES} classes; {device} ({jax.default_backend()}), '
        f'{os.cpu_count()} CPU cores, jax {jax.__version__}; vat {cfg.vat.iterations} '
        'power iteration.\n')
  print('| Decoders | Input size | Peak memory (MiB, XLA estimate) | Time (ms, best) '
        '| Time (ms, median) |')
  print('|---|---|---|---|---|')
  for row in results:
    print(f"| {row['decoder']} | {row['input']} | {row['peak_mib']:.1f} | "
          f"{row['best_ms']:.2f} | {row['median_ms']:.2f} |")
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, 'w') as f:
    json.dump(dict(batch=BATCH, channels=CHANNELS, num_classes=NUM_CLASSES,
                   backend=jax.default_backend(), device=device, cpu_count=os.cpu_count(),
                   jax_version=jax.__version__, repeats=_REPEATS.value, results=results),
              f, indent=2)
  print(f'\nwrote {RESULTS}')


if __name__ == '__main__':
  app.run(main)
