"""Random-access sources of segmentation examples, and the checks that guard them.

Every source here is a grain `RandomAccessDataSource`: `len(source)` and `source[i]`, a
dict with
  'image': uint8 (H, W, 3), always RGB (greyscale, palette and RGBA images are converted),
  'mask':  int32 (H, W), class ids in [0, num_classes) or IGNORE_INDEX (labelled only),
  'id':    str, the example's name (for error messages and predictions).
Sources hold only paths and numbers, so they pickle cheaply into grain worker processes.

Bad input is never trained on silently. Every problem becomes a `DataError` whose message
names the file and the problem; checks that can see many files at once (missing files in
a listing) collect every problem before raising, so one run shows them all.
"""

import dataclasses
import io
from collections.abc import Iterable, Sequence
import os

import numpy as np
from PIL import Image

from cct_jax import errors
from cct_jax.labels import IGNORE_INDEX


class DataError(errors.UserError):
  """Bad input data: a list of problems, each naming a file and what is wrong with it."""

  def __init__(self, problems: Iterable[str]):
    self.problems = list(problems)
    lines = '\n'.join(f'  - {p}' for p in self.problems)
    super().__init__(f'{len(self.problems)} problem(s) with the data:\n{lines}')

  def __reduce__(self):  # Keeps the problem list when raised in a grain worker.
    return DataError, (self.problems,)


def raise_if_problems(problems: Sequence[str]) -> None:
  if problems:
    raise DataError(problems)


# A label map is a 256-entry lookup table from the values stored in a mask file to class
# ids; -1 marks values that may not occur, so a stray value is an error, not a new class.
def index_label_map(num_classes: int) -> np.ndarray:
  """Masks already store class ids 0..C-1, with IGNORE_INDEX for unlabelled pixels."""
  lut = np.full(256, -1, np.int32)
  lut[:num_classes] = np.arange(num_classes)
  lut[IGNORE_INDEX] = IGNORE_INDEX
  return lut


def shifted_label_map(num_classes: int, void: int) -> np.ndarray:
  """Masks store 0..C with one `void` value that becomes IGNORE_INDEX."""
  lut = np.full(256, -1, np.int32)
  raw = [v for v in range(num_classes + 1) if v != void]
  lut[raw] = np.arange(num_classes)
  lut[void] = IGNORE_INDEX
  return lut


def _describe_values(valid: np.ndarray) -> str:
  """'0-20, 255' for a boolean table of valid mask values."""
  values = np.flatnonzero(valid)
  runs = np.split(values, np.flatnonzero(np.diff(values) > 1) + 1)
  return ', '.join(f'{r[0]}-{r[-1]}' if len(r) > 1 else f'{r[0]}' for r in runs)


def _open(src: str | bytes, name: str) -> Image.Image:
  """Opens and fully decodes an image file or encoded bytes; errors name the file."""
  try:
    image = Image.open(src if isinstance(src, str) else io.BytesIO(src))
    image.load()  # Decoding happens here: a truncated file fails now, not later.
  except (OSError, SyntaxError, ValueError) as e:
    raise DataError([f'{name}: unreadable or truncated image ({e})']) from e
  return image


def read_image(src: str | bytes, name: str) -> np.ndarray:
  """Decodes an image to uint8 RGB (H, W, 3); greyscale and RGBA are converted."""
  return np.asarray(_open(src, name).convert('RGB'))


def read_mask(src: str | bytes, name: str, label_map: np.ndarray) -> np.ndarray:
  """Decodes a single-channel index mask (palette or greyscale PNG) to int32 class ids."""
  mask = _open(src, name)
  if mask.mode not in ('P', 'L', 'I', 'I;16', '1'):
    raise DataError([
        f'{name}: colour mask (mode {mask.mode}); expected a single-channel index mask '
        '(palette or greyscale PNG) whose values are class ids'])
  raw = np.asarray(mask).astype(np.int32)
  ids = label_map[np.minimum(raw, len(label_map) - 1)]
  ids[raw >= len(label_map)] = -1  # 16-bit masks can hold any value.
  if (ids < 0).any():
    bad = np.unique(raw[ids < 0])
    raise DataError([f'{name}: mask values {bad[:10].tolist()} are not labels of this '
                     f'dataset (valid: {_describe_values(label_map >= 0)})'])
  return ids


def check_same_size(image: np.ndarray, mask: np.ndarray, name: str) -> None:
  if image.shape[:2] != mask.shape:
    raise DataError([
        f'{name}: mask is {mask.shape[0]}x{mask.shape[1]} but its image is '
        f'{image.shape[0]}x{image.shape[1]}'])


@dataclasses.dataclass(frozen=True)
class Item:
  """One example on disk; `mask` is None for an unlabelled image."""
  id: str
  image: str
  mask: str | None = None


def without_masks(items: Iterable[Item]) -> list[Item]:
  """The same images as unlabelled items: their masks are never read, nor required."""
  return [dataclasses.replace(item, mask=None) for item in items]


def missing_files(items: Iterable[Item]) -> list[str]:
  """Problems for every listed image or mask that is not a file."""
  problems = []
  for item in items:
    for kind, path in (('image', item.image), ('mask', item.mask)):
      if path is not None and not os.path.isfile(path):
        problems.append(f'{path}: {kind} of {item.id!r} does not exist')
  return problems


class FileSource:
  """Examples stored as image and mask files (the layout modules list the files).

  By default every listed file must exist at construction (all missing files named at
  once), so a broken dataset fails before the first step rather than mid-epoch;
  `check_files=False` defers that to reading, as `check_dataset` does to report
  missing files together with every other problem.
  """

  def __init__(self, items: Sequence[Item], label_map: np.ndarray,
               check_files: bool = True):
    self.items = tuple(items)
    self.label_map = label_map
    if check_files:
      raise_if_problems(missing_files(self.items))

  def __len__(self) -> int:
    return len(self.items)

  def ids(self) -> list[str]:
    return [item.id for item in self.items]

  def image_size_of(self, index: int) -> tuple[int, int]:
    """(height, width) of image `index`, from its file's header (nothing decoded)."""
    with Image.open(self.items[index].image) as image:
      return image.height, image.width

  def __getitem__(self, index: int) -> dict:
    item = self.items[index]
    raise_if_problems(missing_files([item]))
    example = {'image': read_image(item.image, item.image), 'id': item.id}
    if item.mask is not None:
      example['mask'] = read_mask(item.mask, item.mask, self.label_map)
      check_same_size(example['image'], example['mask'], item.mask)
    return example

  def __repr__(self) -> str:
    return f'FileSource({len(self)} items, first {self.items[0] if self.items else None})'


class Subset:
  """Examples `indices` of another source, optionally without their masks."""

  def __init__(self, source, indices: Sequence[int], drop_masks: bool = False):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    self.drop_masks = drop_masks

  def __len__(self) -> int:
    return len(self.indices)

  def ids(self) -> list[str]:
    ids = example_ids(self.source)
    return [ids[i] for i in self.indices]

  def __getitem__(self, index: int) -> dict:
    example = self.source[int(self.indices[index])]
    if self.drop_masks:
      example.pop('mask', None)
    return example

  def __repr__(self) -> str:
    return f'Subset({len(self)} of {self.source!r}, drop_masks={self.drop_masks})'


def example_ids(source) -> list[str]:
  """The id of every example; without reading them where the source lists them (`ids()`)."""
  if hasattr(source, 'ids'):
    return source.ids()
  return [source[i]['id'] for i in range(len(source))]


def seeded_split(num_items: int, num_labelled: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Indices of a seeded labelled subset and of the rest, both sorted.

  The labelled set is a prefix of one seeded permutation, so for a fixed seed the sets
  are nested as `num_labelled` grows (the 100-image split contains the 50-image one), and
  labelled and unlabelled are disjoint and cover every item. `num_labelled=-1`: all.
  """
  if num_labelled < 0:
    num_labelled = num_items
  if not 0 < num_labelled <= num_items:
    raise errors.UserError(f'data.num_labelled={num_labelled} must be in [1, {num_items}] '
                           f'(or -1, all): the pool to draw labelled examples from has '
                           f'{num_items} items')
  order = np.random.default_rng(seed).permutation(num_items)
  return np.sort(order[:num_labelled]), np.sort(order[num_labelled:])
