""""fashion5": 64x64 scenes of 1-3 items from MNIST-format IDX files.

The default files are Fashion-MNIST from Debian's `dataset-fashion-mnist`, in
/usr/share/datasets/fashion-mnist/: {train,t10k}-{images-idx3,labels-idx1}-ubyte, each
plain or .gz. Any folder of MNIST-format IDX files works.

Disjoint item pools: a permutation of the official training items (seeded by the scene
seed) gives its first 5/6 (50k of 60k) to train scenes and the rest (10k) to val scenes;
test scenes use the t10k items. A scene: a uniform random background colour + N(0, 0.05)
noise; 1-3 items, each resized from 28 px to U{20..36} px, given a random colour at L2
distance > 0.5 from the background, alpha = clip(1.5 x intensity, 0, 1), pasted at a
random position (later items occlude earlier ones) and labelled on its hole-filled
`intensity > 0.05` mask; finally N(0, 0.03) noise, clipped to [0, 1]. Class 0 is the
background; item classes follow a class map: dataset 'fashion5' merges the items into 4
classes, 'fashion11' keeps the 10 fine ones. Their config section `data.generated` adds
`idx_dir` to generated.py's fields.
"""

import functools
import gzip
import os

import numpy as np
from PIL import Image
from scipy import ndimage

from cct_jax.data import generated, sources

DEFAULT_IDX_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_NAMES = ('t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt',
                 'sneaker', 'bag', 'ankle boot')
# Fine label -> scene class: background / tops / trouser+dress / footwear / bag.
FIVE_CLASS_MAP = (1, 2, 1, 2, 1, 3, 1, 3, 4, 3)
FIVE_CLASS_NAMES = ('background', 'top', 'trouser or dress', 'footwear', 'bag')
FINE_CLASS_MAP = tuple(range(1, 11))
FINE_CLASS_NAMES = ('background',) + FASHION_NAMES
VAL_FRACTION = 1 / 6  # 10k of the 60k official training items.


def _idx_path(idx_dir: str, stem: str) -> str:
  for path in (os.path.join(idx_dir, stem), os.path.join(idx_dir, stem + '.gz')):
    if os.path.isfile(path):
      return path
  raise sources.DataError([
      f'{os.path.join(idx_dir, stem)}[.gz]: IDX file does not exist. Install Fashion-MNIST '
      f'with `apt-get install dataset-fashion-mnist` (files in {DEFAULT_IDX_DIR}), or '
      'point data.generated.idx_dir at another folder of MNIST-format IDX files.'])


def read_idx(path: str) -> np.ndarray:
  """An IDX array of unsigned bytes (the MNIST format), from a plain or gzipped file."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  if len(data) < 4 or data[:3] != b'\x00\x00\x08':
    raise sources.DataError([f'{path}: not an IDX file of unsigned bytes'])
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  offset = 4 + 4 * ndim
  if len(data) - offset != int(np.prod(shape)):
    raise sources.DataError([f'{path}: truncated IDX file (shape {shape})'])
  return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


@functools.cache
def load_items(idx_dir: str, official_split: str) -> tuple[np.ndarray, np.ndarray]:
  """Images (N, 28, 28) and labels (N,) of 'train' or 't10k', cached per process."""
  images = read_idx(_idx_path(idx_dir, f'{official_split}-images-idx3-ubyte'))
  labels = read_idx(_idx_path(idx_dir, f'{official_split}-labels-idx1-ubyte'))
  if len(images) != len(labels):
    raise sources.DataError([f'{idx_dir}: {len(images)} {official_split} images but '
                             f'{len(labels)} labels'])
  return images, labels


@functools.cache
def item_pool(idx_dir: str, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The items that scenes of `split` may use; the three pools are disjoint."""
  if split == 'test':
    return load_items(idx_dir, 't10k')
  images, labels = load_items(idx_dir, 'train')
  order = np.random.default_rng(seed).permutation(len(images))
  num_val = int(round(len(images) * VAL_FRACTION))
  pool = order[num_val:] if split == 'train' else order[:num_val]
  return images[pool], labels[pool]


def scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
          class_map: np.ndarray, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """A (size, size, 3) scene in [0, 1] and its class mask, from an item pool."""
  background = rng.uniform(0.0, 1.0, 3)
  image = background + rng.normal(0.0, 0.05, (size, size, 3))
  mask = np.zeros((size, size), np.int32)
  for _ in range(rng.integers(1, 4)):
    item = rng.integers(len(images))
    side = rng.integers(20, 37)
    intensity = np.asarray(Image.fromarray(images[item]).resize(
        (side, side), Image.Resampling.BILINEAR), np.float32) / 255.0
    colour = rng.uniform(0.0, 1.0, 3)
    while np.linalg.norm(colour - background) <= 0.5:  # Terminates: the cube is wider.
      colour = rng.uniform(0.0, 1.0, 3)
    alpha = np.clip(1.5 * intensity, 0.0, 1.0)[..., None]
    top, left = rng.integers(0, size - side + 1, 2)
    window = (slice(top, top + side), slice(left, left + side))
    image[window] = image[window] * (1.0 - alpha) + colour * alpha
    mask[window][ndimage.binary_fill_holes(intensity > 0.05)] = class_map[labels[item]]
  image += rng.normal(0.0, 0.03, image.shape)
  return np.clip(image, 0.0, 1.0), mask


class Fashion5(generated.GeneratedSource):
  """Item scenes of one split ('train', 'val' or 'test')."""

  def __init__(self, split: str, num_scenes: int, seed: int = 0, *,
               idx_dir: str = DEFAULT_IDX_DIR, class_map=FIVE_CLASS_MAP,
               image_size: int = 64):
    super().__init__(split, num_scenes, seed)
    self.idx_dir, self.image_size = idx_dir, image_size
    self.class_map = np.asarray(class_map, np.int32)
    item_pool(idx_dir, split, seed)  # Fail now, in the caller, if the files are missing.

  def generate(self, rng):
    images, labels = item_pool(self.idx_dir, self.split, self.seed)
    image, mask = scene(rng, images, labels, self.class_map, self.image_size)
    return generated.to_rgb_uint8(image), mask


def scenes(split: str, section, class_map) -> Fashion5:
  """The item scenes of `split` as `data.generated` sets them."""
  return Fashion5(split, section.sizes[split], section.scene_seed, idx_dir=section.idx_dir,
                  class_map=class_map, image_size=section.image_size)


FIVE = generated.generated_dataset(functools.partial(scenes, class_map=FIVE_CLASS_MAP),
                                   FIVE_CLASS_NAMES, idx_dir=DEFAULT_IDX_DIR)
FINE = generated.generated_dataset(functools.partial(scenes, class_map=FINE_CLASS_MAP),
                                   FINE_CLASS_NAMES, idx_dir=DEFAULT_IDX_DIR)
