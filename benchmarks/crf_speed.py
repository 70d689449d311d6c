"""Time per image of the dense CRF: cct_jax.crf (JAX) against pydensecrf2 (C++).

  .venv/bin/python benchmarks/crf_speed.py [--repeats 5] [--num_classes 21]

One 500x375 photo (scikit-image's chelsea, resized) with a blocky label map (a grey-level
multi-Otsu segmentation in 16x16 blocks, 20% of them unsure), the issue's settings
(10 iterations, Gaussian sxy=3 compat=3, bilateral sxy=50 srgb=5 compat=10), 21 classes
as for VOC. JAX is timed after compilation; its total includes building the bilateral
lattice on the host, while the positions-only lattice is cached per image size (so this is
the time per image over a set of same-size images; its build time is listed apart).
pydensecrf's total is the model set-up (both lattices) plus inference. Times are the best
and the median of `--repeats` runs. Prints a Markdown table and writes
benchmarks/results/crf_speed.json.
"""

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import pydensecrf.densecrf as pydensecrf
import skimage.data
import skimage.filters
import skimage.transform
from absl import app, flags

from cct_jax import crf

RESULTS = os.path.join(os.path.dirname(__file__), 'results', 'crf_speed.json')

_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs per implementation.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 21, 'Classes of the label map.')
HEIGHT, WIDTH = 375, 500


def photo_and_labels(num_classes):
  image = skimage.transform.resize(skimage.data.chelsea(), (HEIGHT, WIDTH),
                                   anti_aliasing=True)
  image = np.round(255 * image).astype(np.uint8)
  grey = image.mean(axis=-1)
  classes = np.digitize(grey, skimage.filters.threshold_multiotsu(grey, 4))
  blocks = classes[::16, ::16] % num_classes
  blocks[np.random.default_rng(0).random(blocks.shape) < 0.2] = 255
  labels = np.kron(blocks, np.ones((16, 16), blocks.dtype))[:HEIGHT, :WIDTH]
  return image, labels


def run_pydensecrf(image, unary, config):
  model = pydensecrf.DenseCRF2D(WIDTH, HEIGHT, unary.shape[-1])
  model.setUnaryEnergy(np.ascontiguousarray(unary.reshape(-1, unary.shape[-1]).T))
  model.addPairwiseGaussian(sxy=config.gaussian.sxy, compat=config.gaussian.compat)
  model.addPairwiseBilateral(sxy=config.bilateral.sxy, srgb=config.bilateral.srgb,
                             rgbim=np.ascontiguousarray(image),
                             compat=config.bilateral.compat)
  return np.array(model.inference(config.iterations)).T.reshape(unary.shape)


def measure(fn, repeats):
  """Best and median seconds of `repeats` calls after one warm-up call."""
  result = fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return result, dict(best_s=min(times), median_s=statistics.median(times))


def main(argv):
  del argv
  config = crf.default_crf_config()
  image, labels = photo_and_labels(_NUM_CLASSES.value)
  unary = crf.unary_from_labels(labels, _NUM_CLASSES.value, config.gt_prob)
  position_features = crf._position_features(HEIGHT, WIDTH, config.gaussian.sxy)
  lattices = (crf.build_lattice(position_features),
              crf._bilateral_lattice(image, config.bilateral.sxy, config.bilateral.srgb))
  compats = jnp.asarray([config.gaussian.compat, config.bilateral.compat])
  flat_unary = jnp.asarray(unary.reshape(-1, _NUM_CLASSES.value))

  rows = {}
  ours, rows['JAX total (host lattice + device)'] = measure(
      lambda: jax.block_until_ready(crf.dense_crf(image, unary, config)), _REPEATS.value)
  _, rows['  host: bilateral lattice (d=5)'] = measure(
      lambda: crf._bilateral_lattice(image, config.bilateral.sxy, config.bilateral.srgb),
      _REPEATS.value)
  _, rows['  host: position lattice (d=2, cached per size)'] = measure(
      lambda: crf.build_lattice(position_features), _REPEATS.value)
  _, rows['  device: 10 mean-field iterations'] = measure(
      lambda: jax.block_until_ready(crf._mean_field(flat_unary, lattices, compats,
                                                    iterations=config.iterations)),
      _REPEATS.value)
  reference, rows['pydensecrf2 total (set-up + inference)'] = measure(
      lambda: run_pydensecrf(image, unary, config), _REPEATS.value)

  ours = np.asarray(ours)
  agreement = float(np.mean(ours.argmax(-1) == reference.argmax(-1)))
  device = jax.devices()[0].device_kind
  print(f'\nDense CRF on one {WIDTH}x{HEIGHT} photo, {_NUM_CLASSES.value} classes, '
        f'{config.iterations} iterations; {device} ({jax.default_backend()}), '
        f'{os.cpu_count()} CPU cores, jax {jax.__version__}. Label agreement with '
        f'pydensecrf2: {100 * agreement:.3f}%.\n')
  print('| Step | Time (ms, best) | Time (ms, median) |')
  print('|---|---|---|')
  for name, row in rows.items():
    print(f"| {name} | {1e3 * row['best_s']:.0f} | {1e3 * row['median_s']:.0f} |")
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, 'w') as f:
    json.dump(dict(image=f'skimage chelsea resized to {WIDTH}x{HEIGHT}',
                   num_classes=_NUM_CLASSES.value, iterations=config.iterations,
                   backend=jax.default_backend(), device=device, cpu_count=os.cpu_count(),
                   jax_version=jax.__version__, repeats=_REPEATS.value,
                   label_agreement=agreement,
                   max_marginal_difference=float(np.abs(ours - reference).max()),
                   results=[dict(step=name.strip(), **row) for name, row in rows.items()],
                   note='Run once on a 2-core machine shared with other jobs (a '
                        'training benchmark and other sessions): absolute times are '
                        'inflated and noisy; the ratio is the steadier number.'),
              f, indent=2)
  print(f'\nwrote {RESULTS}')


if __name__ == '__main__':
  app.run(main)
