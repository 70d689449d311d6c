"""Tiny datasets in every supported layout, for tests, benchmarks and smoke runs.

Each writer draws a few rectangles per image, gives each a class and a colour near that
class's own, and writes the image and its mask in the dataset's own format (VOC: palette
PNGs with IGNORE_INDEX borders around objects). Nothing here is real data.
"""

import gzip
import os

import numpy as np
from PIL import Image

from cct_jax.data import camvid, cityscapes, sunrgbd, voc
from cct_jax.data.sources import IGNORE_INDEX


def scene(rng: np.random.Generator, height: int, width: int, values,
          border: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """An RGB image and a mask of raw `values` (background values[0] + 1-3 rectangles).

  With `border`, each rectangle gets a 2-pixel outline of that value (VOC's 255 edges).
  """
  values = np.asarray(values)
  colours = np.random.default_rng(0).integers(0, 256, (len(values), 3))
  mask = np.full((height, width), values[0], np.int32)
  colour_of = np.zeros((height, width), np.int64)
  for _ in range(rng.integers(1, 4)):
    k = rng.integers(len(values))
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    bottom = top + rng.integers(height // 4, height // 2 + 1)
    right = left + rng.integers(width // 4, width // 2 + 1)
    if border is not None:
      mask[top:bottom, left:right] = border
      top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    mask[top:bottom, left:right] = values[k]
    colour_of[top:bottom, left:right] = k
  image = colours[colour_of] + rng.integers(-20, 21, (height, width, 3))
  return np.clip(image, 0, 255).astype(np.uint8), mask


def _save(path: str, array: np.ndarray, palette: list[int] | None = None) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  array = np.ascontiguousarray(array, np.uint8)
  if palette is None:
    image = Image.fromarray(array)
  else:
    image = Image.frombytes('P', array.shape[::-1], array.tobytes())
    image.putpalette(palette)
  if path.endswith('.jpg'):
    image.save(path, quality=90)
  else:
    image.save(path)


def write_voc(root: str, num_train: int = 8, num_val: int = 3, size=(48, 64),
              seed: int = 0) -> str:
  """VOCdevkit/VOC2012 under `root` with train, val and train_aug id lists; returns its
  path. Masks are palette PNGs in both SegmentationClass and SegmentationClassAug."""
  rng = np.random.default_rng(seed)
  voc_root = os.path.join(root, 'VOCdevkit', 'VOC2012')
  ids = [f'2007_{i:06d}' for i in range(num_train + num_val)]
  for image_id in ids:
    image, mask = scene(rng, *size, values=range(21), border=IGNORE_INDEX)
    _save(os.path.join(voc_root, 'JPEGImages', f'{image_id}.jpg'), image)
    for mask_dir in ('SegmentationClass', 'SegmentationClassAug'):
      _save(os.path.join(voc_root, mask_dir, f'{image_id}.png'), mask, voc.palette())
  lists = {'train.txt': ids[:num_train], 'train_aug.txt': ids[:num_train],
           'val.txt': ids[num_train:]}
  for name, listed in lists.items():
    path = os.path.join(voc_root, 'ImageSets', 'Segmentation', name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      f.writelines(f'{i}\n' for i in listed)
  return voc_root


def write_cityscapes(root: str, sizes=(('train', 4), ('val', 2)), size=(32, 64),
                     seed: int = 0) -> None:
  """leftImg8bit/ and gtFine/ (labelIds masks, any of the 34 ids) under `root`."""
  rng = np.random.default_rng(seed)
  for split, count in sizes:
    for i in range(count):
      image_id = f'aachen_{i:06d}_000019'
      image, mask = scene(rng, *size, values=range(cityscapes.NUM_LABEL_IDS))
      _save(os.path.join(root, 'leftImg8bit', split, 'aachen',
                         f'{image_id}_leftImg8bit.png'), image)
      _save(os.path.join(root, 'gtFine', split, 'aachen',
                         f'{image_id}_gtFine_labelIds.png'), mask)


def write_camvid(root: str, sizes=(('train', 4), ('val', 2), ('test', 2)), size=(36, 48),
                 seed: int = 0) -> None:
  """{split}/ and {split}annot/ (values 0-11, 11 void) under `root`."""
  rng = np.random.default_rng(seed)
  for split, count in sizes:
    for i in range(count):
      image, mask = scene(rng, *size, values=range(camvid.NUM_CLASSES + 1))
      _save(os.path.join(root, split, f'0001TP_{i:06d}.png'), image)
      _save(os.path.join(root, f'{split}annot', f'0001TP_{i:06d}.png'), mask)


def write_sun(root: str, sizes=(('train', 4), ('test', 2)), size=(48, 64),
              seed: int = 0) -> None:
  """SUNRGBD-{split}_images/ and {split}13labels/ (values 0-13, 0 unknown)."""
  rng = np.random.default_rng(seed)
  for split, count in sizes:
    for i in range(1, count + 1):
      image, mask = scene(rng, *size, values=range(sunrgbd.NUM_CLASSES + 1))
      _save(os.path.join(root, f'SUNRGBD-{split}_images', f'img-{i:06d}.jpg'), image)
      _save(os.path.join(root, f'{split}13labels', f'img13labels-{i:06d}.png'), mask)


def write_folder(root: str, classes=('background', 'thing', 'stuff'), num_labelled: int = 4,
                 num_unlabelled: int = 3, num_val: int = 2, size=(40, 56),
                 seed: int = 0) -> None:
  """The custom layout (folder.py): classes.txt, images/ and masks/ with train and val;
  the last `num_unlabelled` training images have no mask."""
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, 'classes.txt'), 'w') as f:
    f.writelines(f'{c}\n' for c in classes)
  examples = ([('train', True)] * num_labelled + [('train', False)] * num_unlabelled
              + [('val', True)] * num_val)
  for i, (split, with_mask) in enumerate(examples):
    image, mask = scene(rng, *size, values=range(len(classes)), border=IGNORE_INDEX)
    _save(os.path.join(root, 'images', split, f'{i:04d}.jpg'), image)
    if with_mask:
      _save(os.path.join(root, 'masks', split, f'{i:04d}.png'), mask)


def write_idx(path: str, array: np.ndarray) -> None:
  """An MNIST-format IDX file of uint8 `array`; gzipped when `path` ends in .gz."""
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_fashion_idx(idx_dir: str, num_train: int = 60, num_test: int = 20,
                      gz: bool = True, seed: int = 0) -> None:
  """Fashion-MNIST-like IDX files: blobs of 28x28 'items' with labels 0-9."""
  rng = np.random.default_rng(seed)
  os.makedirs(idx_dir, exist_ok=True)
  rows, cols = np.mgrid[:28, :28]
  suffix = '.gz' if gz else ''
  for split, count in (('train', num_train), ('t10k', num_test)):
    centre = rng.uniform(9, 19, (count, 2, 1, 1))
    radius = rng.uniform(4, 9, (count, 1, 1))
    blobs = (rows - centre[:, 0])**2 + (cols - centre[:, 1])**2 < radius**2
    write_idx(os.path.join(idx_dir, f'{split}-images-idx3-ubyte{suffix}'),
              blobs * rng.integers(100, 256, (count, 1, 1)))
    write_idx(os.path.join(idx_dir, f'{split}-labels-idx1-ubyte{suffix}'),
              np.arange(count) % 10)
