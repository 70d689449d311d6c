"""What a user sees of a run: console progress (progress.py), `metrics.jsonl`, TensorBoard,
the config.

Everything is written by process 0 only; other processes get a writer that does nothing.
The workdir may be a local folder or a bucket (`gs://...`, through etils.epath; TensorBoard
there needs google-cloud-storage, `pip install cct-jax[gcs]`).

Metrics on a bucket. A local `metrics.jsonl` is appended at every flush (every
`train.log_every` steps and evaluation). A bucket's objects cannot be appended to: each
flush there writes one new object, `metrics/00000000.jsonl`, `metrics/00000001.jsonl`, ...
holding that flush's lines, so every byte goes up once (VOC's 45,600 steps: about 2,300
objects, 23 MB in all). The alternatives upload more: rewriting one metrics.jsonl, or
copying up a local file that is appended, sends the whole file each time (23 MB written
2,300 times, ~26 GB); a rolling shard closed every N MB rewrites up to N MB per flush. The
price of one object per flush is reading: `read_metrics` joins metrics.jsonl and the
shards in order, fetching the shards concurrently. A resumed run goes on numbering after
the shards already there, so the joined lines are what a local file would hold.
"""

import concurrent.futures
import json
import logging as std_logging

import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from cct_jax import progress


METRICS = 'metrics.jsonl'
SHARDS = 'metrics'  # on a bucket: one object per flush, SHARDS/<8 digits>.jsonl


def is_bucket(path) -> bool:
  """Object storage (gs://, s3://, ...), where a file is written whole or not at all."""
  return '://' in str(path)


def shard_paths(workdir) -> list[epath.Path]:
  """A bucket run's metric shards, in the order written."""
  shards = epath.Path(workdir) / SHARDS
  if not shards.exists():
    return []
  return sorted(shards.glob('*.jsonl'), key=lambda path: int(path.stem))


def read_metrics(workdir) -> list[dict]:
  """Every record of a run's metrics, in the order written: metrics.jsonl's lines (a local
  run's, or a bucket run's from before the shards), then the shards' lines."""
  jsonl = epath.Path(workdir) / METRICS
  paths = ([jsonl] if jsonl.exists() else []) + shard_paths(workdir)
  # One request per object on a bucket: many in flight at once.
  with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
    texts = list(pool.map(lambda path: path.read_text(), paths))
  return [json.loads(line) for text in texts for line in text.splitlines() if line]


class MetricWriter:

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self._dir = epath.Path(workdir)
    self._tensorboard = None
    self._jsonl = None  # a local metrics.jsonl, appended
    self._next_shard = None  # on a bucket: the number of the next flush's object
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tensorboard = SummaryWriter(str(self._dir / 'tensorboard'))
      if is_bucket(self._dir):
        shards = shard_paths(self._dir)
        self._next_shard = int(shards[-1].stem) + 1 if shards else 0
        (self._dir / SHARDS).mkdir(parents=True, exist_ok=True)
      else:
        self._jsonl = open(self._dir / METRICS, 'a')
    self._progress = None
    self._waited = None  # input wait since the last progress update; None: not measured

  def write_config(self, config) -> None:
    if self.enabled:
      # Whole or not at all: the other processes of a resumed run read it meanwhile
      # (config_drift), and a half-written one stopped them.
      partial = self._dir / 'config.json.partial'
      partial.write_text(config.to_json_best_effort(indent=2))
      partial.replace(self._dir / 'config.json')

  def _record(self, *records: dict) -> None:
    lines = [json.dumps(record) + '\n' for record in records]
    if self._jsonl is None:
      (self._dir / SHARDS / f'{self._next_shard:08d}.jsonl').write_text(''.join(lines))
      self._next_shard += 1
    else:
      self._jsonl.writelines(lines)
      self._jsonl.flush()

  def start(self, step: int, num_steps: int, images_per_step: float,
            what: str = 'training') -> None:
    """Training's progress line from `step` (a resumed run's first) to `num_steps`; counted
    on every process, for the watchdog."""
    self._progress = progress.Reporter(num_steps, unit='steps', what=what, done=step,
                                       images_per_unit=images_per_step, log=self.enabled)

  def add_input_wait(self, seconds: float) -> None:
    """Time the training loop spent waiting for a batch: its share goes on the line."""
    self._waited = (self._waited or 0.0) + seconds

  def write_scalars(self, history: list[tuple[int, dict]]) -> None:
    """Per-step metrics to metrics.jsonl (on a bucket, a shard) and TensorBoard; the
    progress line, at most every `progress.Reporter.every_s` seconds, and the closing one at
    the last step."""
    if not history:
      return
    if self.enabled:
      records = []
      for step, metrics in history:
        scalars = {k: float(v) for k, v in metrics.items()}
        records.append({'step': step, **scalars})
        for name, value in scalars.items():
          self._tensorboard.add_scalar(f'train/{name}', value, step)
      self._record(*records)
    step, metrics = history[-1]
    losses = ' '.join(f'{k}={float(v):.4f}' for k, v in metrics.items() if k.startswith('loss'))
    self._progress.update(step - self._progress.count, waited_s=self._waited, note=losses)
    self._waited = None
    if step >= self._progress.total:
      self._progress.done(note=losses)

  def write_eval(self, step: int, split: str, results: dict) -> None:
    if not self.enabled:
      return
    self._record({'step': step, f'{split}/miou': results['miou'],
                  f'{split}/pixel_accuracy': results['pixel_accuracy']})
    self._tensorboard.add_scalar(f'{split}/miou', results['miou'], step)
    self._tensorboard.add_scalar(f'{split}/pixel_accuracy', results['pixel_accuracy'], step)
    for name, iou in results.get('per_class_iou', {}).items():  # not of an average
      if iou is not None:
        self._tensorboard.add_scalar(f'{split}/iou/{name}', iou, step)
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


def quiet_library_logs() -> None:
  """Keeps the console to this project's progress lines: other libraries' INFO records
  (orbax logs every file it writes, jax every backend it probes) are dropped."""
  def keep(record) -> bool:
    return record.levelno >= std_logging.WARNING or '/cct_jax/' in record.pathname

  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(keep)
