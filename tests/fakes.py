"""Tiny datasets in every supported layout, for tests and benchmarks. Nothing here is real
data, but each writer varies what the real dataset varies, so that code which only works
on uniform data fails here first.

Each image holds a few rectangles, each of a class and a colour near that class's own;
the mask is written in the dataset's own format (VOC: palette PNGs with IGNORE_INDEX
borders around objects). What varies, as in the real data:
  VOC             every image its own size (VOC's are up to 500x500 in many shapes; here
                  40-120 pixels a side), SBD-only images in train_aug.txt interleaved
                  with train.txt's, SegmentationClass only for train.txt and val
  SUN RGB-D       the four sensors' frame sizes, scaled down tenfold
  custom folder   sizes, .jpg / .jpeg / .png files, and greyscale images among RGB ones
  Cityscapes      images spread over several cities (all one size, as the real ones)
  CamVid          several capture sequences in the names (all one size, as the real ones)
"""

import gzip
import os

import numpy as np
from PIL import Image

from cct_jax import visualize
from cct_jax.data import camvid, cityscapes, sunrgbd, voc
from cct_jax.data.sources import IGNORE_INDEX

# Frame sizes of SUN RGB-D's sensors (Kinect v1, Kinect v2, RealSense, Xtion), / 10.
SUN_SIZES = ((43, 56), (53, 73), (53, 68), (44, 59))
CITIES = ('aachen', 'bochum', 'bremen')
CAMVID_SEQUENCES = ('0001TP_{:06d}', '0006R0_f{:05d}', 'Seq05VD_f{:05d}')


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


def distinct_sizes(count: int, seed: int = 0, low: int = 40,
                   high: int = 120) -> list[tuple[int, int]]:
  """`count` different (height, width) pairs, each side in [low, high]: portrait,
  landscape and square shapes, as VOC's."""
  side = high - low + 1
  if count > side * side:
    raise ValueError(f'only {side * side} distinct sizes with sides in [{low}, {high}]')
  flat = np.random.default_rng(seed).choice(side * side, count, replace=False)
  return [(low + int(f) // side, low + int(f) % side) for f in flat]


def _save(path: str, array: np.ndarray, palette: list[int] | None = None) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  array = np.ascontiguousarray(array, np.uint8)
  if palette is None:
    image = Image.fromarray(array)
  else:
    image = Image.frombytes('P', array.shape[::-1], array.tobytes())
    image.putpalette(palette)
  if path.endswith(('.jpg', '.jpeg')):
    image.save(path, format='JPEG', quality=90)
  else:
    image.save(path)


def _write_lines(path: str, lines) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.writelines(f'{line}\n' for line in lines)


def write_voc_folder(root: str, *, num_train: int = 8, num_val: int = 3, num_sbd: int = 0,
                     sizes=None, seed: int = 0) -> str:
  """VOCdevkit/VOC2012 under `root`; returns its path.

  `num_train` images are listed in ImageSets/Segmentation/train.txt (the role of VOC's
  1464 finely annotated ones), `num_sbd` more only in train_aug.txt (SBD's extra images;
  train_aug.txt holds both kinds, interleaved in id order as the real list), `num_val`
  in val.txt. Every image has a SegmentationClassAug mask; SegmentationClass has
  train.txt's and val.txt's only. `sizes`: (height, width) pairs cycled over the images
  in id order; by default every image has its own size (`distinct_sizes`), so the val
  images alone have `num_val` different sizes.
  """
  rng = np.random.default_rng(seed)
  voc_root = os.path.join(root, 'VOCdevkit', 'VOC2012')
  num_aug = num_train + num_sbd
  ids = [f'2007_{i:06d}' for i in range(num_aug + num_val)]
  aug_ids, val_ids = ids[:num_aug], ids[num_aug:]
  fine = set(rng.choice(num_aug, num_train, replace=False).tolist())
  train_ids = [image_id for k, image_id in enumerate(aug_ids) if k in fine]
  sizes = sizes or distinct_sizes(len(ids), seed)
  for k, image_id in enumerate(ids):
    image, mask = scene(rng, *sizes[k % len(sizes)], values=range(voc.NUM_CLASSES),
                        border=IGNORE_INDEX)
    _save(os.path.join(voc_root, 'JPEGImages', f'{image_id}.jpg'), image)
    mask_dirs = ['SegmentationClassAug']
    if image_id in train_ids or image_id in val_ids:
      mask_dirs.append('SegmentationClass')
    for mask_dir in mask_dirs:
      _save(os.path.join(voc_root, mask_dir, f'{image_id}.png'), mask, visualize.palette())
  lists = {'train.txt': train_ids, 'train_aug.txt': aug_ids, 'val.txt': val_ids}
  for name, listed in lists.items():
    _write_lines(os.path.join(voc_root, 'ImageSets', 'Segmentation', name), listed)
  return voc_root


def write_cityscapes_folder(root: str, splits=(('train', 4), ('val', 2)), size=(32, 64),
                            seed: int = 0) -> None:
  """leftImg8bit/ and gtFine/ (labelIds masks, any of the 34 ids) under `root`, the
  images of each split spread over `CITIES`."""
  rng = np.random.default_rng(seed)
  for split, count in splits:
    for i in range(count):
      city = CITIES[i % len(CITIES)]
      image_id = f'{city}_{i:06d}_{19 + 20 * i:06d}'
      image, mask = scene(rng, *size, values=range(cityscapes.NUM_LABEL_IDS))
      _save(os.path.join(root, 'leftImg8bit', split, city, f'{image_id}_leftImg8bit.png'),
            image)
      _save(os.path.join(root, 'gtFine', split, city, f'{image_id}_gtFine_labelIds.png'),
            mask)


def write_camvid_folder(root: str, splits=(('train', 4), ('val', 2), ('test', 2)),
                        size=(36, 48), seed: int = 0) -> None:
  """{split}/ and {split}annot/ (values 0-11, 11 void) under `root`, names from several
  capture sequences."""
  rng = np.random.default_rng(seed)
  for split, count in splits:
    for i in range(count):
      name = CAMVID_SEQUENCES[i % len(CAMVID_SEQUENCES)].format(30 * i) + '.png'
      image, mask = scene(rng, *size, values=range(camvid.NUM_CLASSES + 1))
      _save(os.path.join(root, split, name), image)
      _save(os.path.join(root, f'{split}annot', name), mask)


def write_sun_folder(root: str, splits=(('train', 4), ('test', 2)), seed: int = 0) -> None:
  """SUNRGBD-{split}_images/ and {split}13labels/ (values 0-13, 0 unknown), the images
  in `SUN_SIZES` in turn."""
  rng = np.random.default_rng(seed)
  for split, count in splits:
    for i in range(1, count + 1):
      image, mask = scene(rng, *SUN_SIZES[i % len(SUN_SIZES)],
                          values=range(sunrgbd.NUM_CLASSES + 1))
      _save(os.path.join(root, f'SUNRGBD-{split}_images', f'img-{i:06d}.jpg'), image)
      _save(os.path.join(root, f'{split}13labels', f'img13labels-{i:06d}.png'), mask)


def write_custom_folder(root: str, classes=('background', 'thing', 'stuff'),
                        num_labelled: int = 4, num_unlabelled: int = 3, num_val: int = 2,
                        seed: int = 0) -> None:
  """The custom layout (folder.py): classes.txt, images/ and masks/ with train and val;
  the last `num_unlabelled` training images have no mask. Images come in different
  sizes, as .jpg, .jpeg or .png, every third one greyscale."""
  rng = np.random.default_rng(seed)
  _write_lines(os.path.join(root, 'classes.txt'), classes)
  examples = ([('train', True)] * num_labelled + [('train', False)] * num_unlabelled
              + [('val', True)] * num_val)
  sizes = distinct_sizes(len(examples), seed)
  for i, (split, with_mask) in enumerate(examples):
    image, mask = scene(rng, *sizes[i], values=range(len(classes)), border=IGNORE_INDEX)
    if i % 3 == 2:
      image = image.mean(axis=-1)
    extension = ('.jpg', '.png', '.jpeg')[i % 3]
    _save(os.path.join(root, 'images', split, f'{i:04d}{extension}'), image)
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
