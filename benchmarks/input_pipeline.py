"""Throughput of the VOC training input pipeline (SPEC 4 augmentation, 320 crops).

Writes a VOC-layout folder of realistic 500x375 JPEGs to a temporary directory, then
times the paired labelled + unlabelled streams (10 + 10 per step, as the paper) with 0 and
2 worker processes. Prints a table and writes benchmarks/results/input_pipeline.json.

  python benchmarks/input_pipeline.py [--steps=30] [--workers=0,2]
"""

import json
import os
import platform
import tempfile
import time

from absl import app, flags

from cct_jax import data
from cct_jax.data import fake

_STEPS = flags.DEFINE_integer('steps', 30, 'Timed steps per setting (after 3 warm-up).')
_WORKERS = flags.DEFINE_list('workers', ['0', '2'], 'Worker process counts to time.')
_IMAGES = flags.DEFINE_integer('images', 80, 'Images written (half labelled).')
_OUT = flags.DEFINE_string('out', os.path.join(os.path.dirname(__file__), 'results',
                                               'input_pipeline.json'), 'JSON output.')
WARMUP_STEPS = 3


def time_streams(cfg, steps: int) -> float:
  """Seconds for `steps` steps of both streams, after a warm-up (worker start-up)."""
  streams = data.make_train_streams(cfg)
  try:
    for _ in range(WARMUP_STEPS):
      next(streams)
    start = time.perf_counter()
    for _ in range(steps):
      next(streams)
    return time.perf_counter() - start
  finally:
    streams.close()


def main(argv):
  del argv
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root = fake.write_voc(tmp, num_train=_IMAGES.value, num_val=1, size=(375, 500))
    cfg = data.default_data_config('voc')
    cfg.update(dict(root=root, num_labelled=_IMAGES.value // 2))
    for workers in map(int, _WORKERS.value):
      cfg.num_workers = workers
      seconds = time_streams(cfg, _STEPS.value)
      images = _STEPS.value * (cfg.batch_size_labelled + cfg.batch_size_unlabelled)
      rows.append(dict(workers=workers, read_threads=cfg.read_threads, steps=_STEPS.value,
                       images=images, seconds=round(seconds, 3),
                       images_per_s=round(images / seconds, 1)))

  print(f'VOC training pipeline, crop {cfg.crop_size}, batch '
        f'{cfg.batch_size_labelled}+{cfg.batch_size_unlabelled}, '
        f'{os.cpu_count()} CPU cores')
  print(f'{"workers":>8} {"threads":>8} {"images":>8} {"seconds":>8} {"images/s":>9}')
  for r in rows:
    print(f'{r["workers"]:>8} {r["read_threads"]:>8} {r["images"]:>8} {r["seconds"]:>8.2f} '
          f'{r["images_per_s"]:>9.1f}')
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(dict(benchmark='input_pipeline', crop_size=cfg.crop_size,
                   image_size='500x375 JPEG', cpu_count=os.cpu_count(),
                   machine=platform.machine(), python=platform.python_version(),
                   results=rows), f, indent=2)


if __name__ == '__main__':
  app.run(main)
