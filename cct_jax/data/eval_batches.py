"""Evaluation batches of whole images of any sizes: a few compiled programs, full batches.

Each image is padded at the bottom and right to a square canvas whose side is its longer
side rounded up to a multiple of `bucket`, capped at the split's longest side (rounded up
to 8): VOC's images (up to 500 pixels) fall into 4 canvas sizes at bucket 128, so the
evaluation compiles at most 4 programs whatever the mix of sizes. The images are taken in
order of their canvas, smallest first, and cut into global batches of `batch_size`; a
batch takes the canvas of its largest image, so every batch but the last is full of real
images and every device of every process works on one. Process p loads rows
[p B / P, (p + 1) B / P) of each global batch; blanks fill the last one.

Every row carries 'size', the image's own (height, width): the model pools each image's
own region in PSP (`models.Encoder`), the mask's padding is IGNORE_INDEX (not scored), and
pictures are cropped back. 'valid' is False on blank rows.
"""

import dataclasses
import math
from collections.abc import Callable, Iterable

import grain
import numpy as np

from cct_jax import errors
from cct_jax.data.sources import IGNORE_INDEX


def image_sizes(source) -> np.ndarray:
  """(N, 2) heights and widths of `source`'s images, from file headers where the source
  can read them (`image_size_of(index)`), else by decoding each example."""
  if hasattr(source, 'image_size_of'):
    return np.array([source.image_size_of(i) for i in range(len(source))], np.int64)
  return np.array([source[i]['image'].shape[:2] for i in range(len(source))], np.int64)


def canvas_sides(sizes: np.ndarray, bucket: int) -> np.ndarray:
  """Each image's canvas side: its longer side up to a multiple of `bucket`, at most the
  longest side of all up to a multiple of 8 (the model's input granularity)."""
  longest = sizes.max(axis=1)
  cap = -(-longest.max() // 8) * 8
  return np.minimum(-(-longest // bucket) * bucket, cap)


@dataclasses.dataclass
class EvalBatches:
  """Re-iterable evaluation batches (`for batch in ...` at every evaluation), counted."""
  batches: Iterable[dict]
  num_batches: int

  def __iter__(self):
    return iter(self.batches)

  def __len__(self) -> int:
    return self.num_batches


class _LoadBatch:
  """Global batch k -> this process's rows, padded to the batch's canvas."""

  def __init__(self, source, transform: Callable, order: np.ndarray, sides: np.ndarray,
               batch_size: int, process_index: int, process_count: int, keys: tuple[str, ...]):
    self.source, self.transform, self.order, self.sides = source, transform, order, sides
    self.keys = keys
    self.batch_size, self.rows = batch_size, batch_size // process_count
    self.first_row = process_index * self.rows

  def __call__(self, k: int) -> dict:
    members = self.order[k * self.batch_size:(k + 1) * self.batch_size]
    side = int(self.sides[members].max())
    mine = members[self.first_row:self.first_row + self.rows]
    batch = {'image': np.zeros((self.rows, side, side, 3), np.float32),
             'mask': np.full((self.rows, side, side), IGNORE_INDEX, np.int32),
             'valid': np.zeros((self.rows,), bool),
             'size': np.ones((self.rows, 2), np.int32),
             **{key: np.full((self.rows,), -1, np.int64) for key in self.keys}}
    for row, index in enumerate(mine):
      example = self.transform(self.source[int(index)])
      h, w = example['image'].shape[:2]
      batch['image'][row, :h, :w] = example['image']
      batch['mask'][row, :h, :w] = example['mask']
      batch['valid'][row] = True
      batch['size'][row] = (h, w)
      for key in self.keys:
        batch[key][row] = example[key]
    return batch


def eval_batches(source, transform: Callable, sizes: np.ndarray, *, batch_size: int,
                 bucket: int, process_index: int = 0, process_count: int = 1,
                 keys: tuple[str, ...] = ()) -> grain.MapDataset:
  """This process's evaluation batches of `source` ('image', 'mask', 'valid', 'size', and
  the integer fields `keys` of each example, -1 on blank rows).

  `transform(example)` normalises (and resizes, for fixed-size datasets) without
  padding; `sizes` (N, 2) are the transformed images' sizes; `batch_size` is the global
  batch, a multiple of `process_count`.
  """
  if batch_size % process_count:
    raise errors.UserError(f'the evaluation batch {batch_size} does not divide over '
                           f'{process_count} processes')
  sides = canvas_sides(sizes, bucket)
  order = np.argsort(sides, kind='stable')
  num_batches = math.ceil(len(source) / batch_size)
  return grain.MapDataset.range(num_batches).map(
      _LoadBatch(source, transform, order, sides, batch_size, process_index, process_count,
                 keys))
