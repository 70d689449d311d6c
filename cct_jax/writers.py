"""What a user sees of a run: console progress, `metrics.jsonl`, TensorBoard, the config.

Everything is written by process 0 only; other processes get a writer that does nothing.
The workdir may be a local folder or a bucket (`gs://...`, through etils.epath; TensorBoard
there needs google-cloud-storage, `pip install cct-jax[gcs]`).
"""

import json
import logging as std_logging
import time

import numpy as np
from absl import logging
from etils import epath
from PIL import Image


class MetricWriter:

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self._dir = epath.Path(workdir)
    self._tensorboard = None
    self._jsonl = None
    self._lines = None  # metrics.jsonl of a bucket, rewritten whole (no appending there)
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tensorboard = SummaryWriter(str(self._dir / 'tensorboard'))
      jsonl = self._dir / 'metrics.jsonl'
      if '://' in str(jsonl):
        self._lines = jsonl.read_text().splitlines(keepends=True) if jsonl.exists() else []
      else:
        self._jsonl = open(jsonl, 'a')
    self._clock = None

  def write_config(self, config) -> None:
    if self.enabled:
      (self._dir / 'config.json').write_text(config.to_json_best_effort(indent=2))

  def _record(self, *records: dict) -> None:
    lines = [json.dumps(record) + '\n' for record in records]
    if self._jsonl is None:
      self._lines.extend(lines)
      (self._dir / 'metrics.jsonl').write_text(''.join(self._lines))
    else:
      self._jsonl.writelines(lines)
      self._jsonl.flush()

  def start(self, step: int, num_steps: int, images_per_step: int) -> None:
    self._clock = (time.perf_counter(), step)
    self._num_steps = num_steps
    self._images_per_step = images_per_step

  def write_scalars(self, history: list[tuple[int, dict]]) -> None:
    """Per-step metrics to metrics.jsonl and TensorBoard, and one progress line."""
    if not (self.enabled and history):
      return
    records = []
    for step, metrics in history:
      scalars = {k: float(v) for k, v in metrics.items()}
      records.append({'step': step, **scalars})
      for name, value in scalars.items():
        self._tensorboard.add_scalar(f'train/{name}', value, step)
    self._record(*records)
    step, metrics = history[-1]
    start_time, start_step = self._clock
    elapsed = time.perf_counter() - start_time
    steps_per_s = (step - start_step) / max(elapsed, 1e-9)
    eta = (self._num_steps - step) / max(steps_per_s, 1e-9)
    losses = ' '.join(f'{k}={float(v):.4f}' for k, v in metrics.items() if k.startswith('loss'))
    logging.info('step %d/%d %s | %.1f img/s | ETA %s', step, self._num_steps, losses,
                 steps_per_s * self._images_per_step, _duration(eta))
    self._clock = (time.perf_counter(), step)

  def write_eval(self, step: int, split: str, results: dict) -> None:
    if not self.enabled:
      return
    self._record({'step': step, f'{split}/miou': results['miou'],
                  f'{split}/pixel_accuracy': results['pixel_accuracy']})
    self._tensorboard.add_scalar(f'{split}/miou', results['miou'], step)
    self._tensorboard.add_scalar(f'{split}/pixel_accuracy', results['pixel_accuracy'], step)
    logging.info('step %d: %s mIoU %.2f, pixel accuracy %.2f', step, split,
                 100 * results['miou'], 100 * results['pixel_accuracy'])

  def write_images(self, step: int, tag: str, images: np.ndarray) -> None:
    """(N, H, W, 3) uint8 pictures, e.g. image | label | prediction panels."""
    if self.enabled:
      self._tensorboard.add_images(tag, images, step, dataformats='NHWC')

  def write_json(self, name: str, results: dict) -> str:
    path = self._dir / name
    if self.enabled:
      path.write_text(json.dumps(results, indent=2))
    return str(path)

  def write_png(self, name: str, picture: np.ndarray) -> str:
    path = self._dir / name
    if self.enabled:
      with path.open('wb') as f:
        Image.fromarray(picture).save(f, format='PNG')
    return str(path)

  def close(self) -> None:
    if self.enabled:
      self._tensorboard.close()
      if self._jsonl is not None:
        self._jsonl.close()


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def quiet_library_logs() -> None:
  """Keeps the console to this project's progress lines: other libraries' INFO records
  (orbax logs every file it writes, jax every backend it probes) are dropped."""
  def keep(record) -> bool:
    return record.levelno >= std_logging.WARNING or '/cct_jax/' in record.pathname

  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(keep)
