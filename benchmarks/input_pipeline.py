"""Throughput of the VOC training input pipeline against what the train step needs.

Writes a VOC-layout folder of JPEGs in VOC's common sizes (500x375, 375x500, 500x333, ...)
to a temporary directory, then times the paired labelled + unlabelled streams (10 + 10
images per step, 320 crops, paper sec. 4.3) for several worker-process and read-thread
counts, 'auto' being the default chosen from this host's cores
(`cct_jax.data.pipeline.input_workers`). The paper's step consumes 20 images; at a step
time of t seconds on the accelerator it needs 20 / t images/s from each host per 10 + 10
per-device batch it feeds, so the table also prints that need for a few step times.
Prints a table and writes benchmarks/results/input_pipeline.json.

  nice -n 19 python benchmarks/input_pipeline.py [--steps=30] [--settings=auto,0:2,2:2]
"""

import json
import os
import platform
import sys
import tempfile
import time

from absl import app, flags

from cct_jax import data
from cct_jax.data import factory, pipeline

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
import fakes  # pylint: disable=wrong-import-position

_STEPS = flags.DEFINE_integer('steps', 30, 'Timed steps per setting (after 3 warm-up).')
_SETTINGS = flags.DEFINE_list(
    'settings', ['auto', '0:1', '0:2', '0:4', '1:2', '2:1', '2:2'],
    "Settings to time: 'workers:read_threads', or 'auto' (the defaults for this host).")
_IMAGES = flags.DEFINE_integer('images', 80, 'Training images written (half labelled).')
_STEP_TIMES = flags.DEFINE_list('step_times', ['0.25', '0.5', '1'],
                                'Accelerator step times (s) to state the need for.')
_OUT = flags.DEFINE_string('out', os.path.join(os.path.dirname(__file__), 'results',
                                               'input_pipeline.json'), 'JSON output.')
WARMUP_STEPS = 3
# VOC 2012's most common image sizes (height, width); its images are at most 500x500.
VOC_SIZES = ((375, 500), (500, 375), (333, 500), (500, 333), (281, 500), (366, 500))


def parse_setting(setting: str) -> tuple[int, int]:
  """'workers:threads' or 'auto' -> the counts passed to the pipeline."""
  if setting == 'auto':
    return factory.AUTO, factory.AUTO
  workers, threads = setting.split(':')
  return int(workers), int(threads)


def time_streams(cfg, steps: int) -> float:
  """Seconds for `steps` steps of both streams, after a warm-up (worker start-up)."""
  streams = pipeline.make_train_streams(cfg)
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
    root = fakes.write_voc_folder(tmp, num_train=_IMAGES.value, num_val=1, sizes=VOC_SIZES)
    cfg = data.default_data_config('voc')
    cfg.update(dict(root=root, num_labelled=_IMAGES.value // 2))
    images_per_step = cfg.batch_size_labelled + cfg.batch_size_unlabelled
    for setting in _SETTINGS.value:
      cfg.num_workers, cfg.read_threads = parse_setting(setting)
      workers, threads = pipeline.input_workers(cfg.num_workers, cfg.read_threads)
      seconds = time_streams(cfg, _STEPS.value)
      images = _STEPS.value * images_per_step
      rows.append(dict(setting=setting, workers=workers, read_threads=threads,
                       steps=_STEPS.value, images=images, seconds=round(seconds, 3),
                       images_per_s=round(images / seconds, 1)))
  need = {t: round(images_per_step / float(t), 1) for t in _STEP_TIMES.value}
  best = max(r['images_per_s'] for r in rows)

  cores = pipeline.usable_cores()
  print(f'VOC training pipeline, crop {cfg.crop_size}, batch '
        f'{cfg.batch_size_labelled}+{cfg.batch_size_unlabelled}, {cores} usable CPU cores')
  print(f'{"setting":>8} {"workers":>8} {"threads":>8} {"images":>8} {"seconds":>8} '
        f'{"images/s":>9}')
  for r in rows:
    print(f'{r["setting"]:>8} {r["workers"]:>8} {r["read_threads"]:>8} {r["images"]:>8} '
          f'{r["seconds"]:>8.2f} {r["images_per_s"]:>9.1f}')
  print(f'need of one {cfg.batch_size_labelled}+{cfg.batch_size_unlabelled} step per '
        'accelerator step time, against the best setting here:')
  for step_time, images_per_s in need.items():
    print(f'  {step_time:>5} s/step: {images_per_s:>6.1f} images/s '
          f'({best / images_per_s:.2f}x covered)')
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(dict(benchmark='input_pipeline', crop_size=cfg.crop_size,
                   image_sizes=[f'{w}x{h} JPEG' for h, w in VOC_SIZES], usable_cores=cores,
                   cpu_count=os.cpu_count(), machine=platform.machine(),
                   python=platform.python_version(), results=rows,
                   images_per_s_needed_per_step_time=need), f, indent=2)


if __name__ == '__main__':
  app.run(main)
