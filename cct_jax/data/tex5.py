""""tex5": 64x64 mosaics of five real textures bundled with scikit-image.

Classes 0-4: brick, grass, gravel, moon and immunohistochemistry (to grey). Each texture
is cropped to 512x512 and area-averaged to 256x256; the splits draw from disjoint regions
of it: train rows 0-127 (all columns), val rows 128-255 x columns 0-127, test rows
128-255 x columns 128-255. A mosaic has 2-5 Voronoi cells, each a random class filled from
a random 64x64 window of that texture's region, rotated by k x 90 degrees, maybe flipped,
contrast x U(0.7, 1.3) about the window mean and brightness + U(-0.1, 0.1); then Gaussian
noise (sigma 0.02) and clipping to [0, 1]. There is no background class.
"""

import functools

import numpy as np
import skimage.color
import skimage.data

from cct_jax.data import generated

CLASS_NAMES = ('brick', 'grass', 'gravel', 'moon', 'ihc')
NUM_CLASSES = len(CLASS_NAMES)
_LOADERS = ('brick', 'grass', 'gravel', 'moon', 'immunohistochemistry')
REGIONS = {  # (rows, columns) of the 256x256 textures.
    'train': (slice(0, 128), slice(0, 256)),
    'val': (slice(128, 256), slice(0, 128)),
    'test': (slice(128, 256), slice(128, 256)),
}


@functools.cache
def textures() -> np.ndarray:
  """(5, 256, 256) float32 grey textures in [0, 1]."""
  out = []
  for loader in _LOADERS:
    texture = getattr(skimage.data, loader)()[:512, :512]
    texture = skimage.color.rgb2gray(texture) if texture.ndim == 3 else texture / 255.0
    out.append(texture.reshape(256, 2, 256, 2).mean(axis=(1, 3)))  # 2x2 area average.
  return np.stack(out).astype(np.float32)


def mosaic(rng: np.random.Generator, region: np.ndarray, size: int = 64
           ) -> tuple[np.ndarray, np.ndarray]:
  """A (size, size) grey mosaic and its class mask from `region`, (5, h, w) textures."""
  num_cells = rng.integers(2, 6)
  centres = rng.uniform(0, size, (num_cells, 2))
  rows, cols = np.mgrid[:size, :size]
  distance = (rows - centres[:, 0, None, None])**2 + (cols - centres[:, 1, None, None])**2
  cell = distance.argmin(axis=0)
  classes = rng.integers(0, len(region), num_cells)
  image = np.zeros((size, size), np.float32)
  for c, texture in enumerate(region[classes]):
    top = rng.integers(0, texture.shape[0] - size + 1)
    left = rng.integers(0, texture.shape[1] - size + 1)
    window = np.rot90(texture[top:top + size, left:left + size], rng.integers(4))
    if rng.random() < 0.5:
      window = window[:, ::-1]
    mean = window.mean()
    window = (window - mean) * rng.uniform(0.7, 1.3) + mean + rng.uniform(-0.1, 0.1)
    image[cell == c] = window[cell == c]
  image += rng.normal(0.0, 0.02, image.shape)
  return np.clip(image, 0.0, 1.0), classes[cell].astype(np.int32)


class Tex5(generated.GeneratedSource):
  """Texture mosaics of one split ('train', 'val' or 'test')."""

  def __init__(self, split: str, num_scenes: int, seed: int = 0, image_size: int = 64):
    super().__init__(split, num_scenes, seed)
    self.image_size = image_size

  def generate(self, rng):
    rows, cols = REGIONS[self.split]
    image, mask = mosaic(rng, textures()[:, rows, cols], self.image_size)
    return generated.to_rgb_uint8(image), mask


def scenes(split: str, section) -> Tex5:
  """The mosaics of `split` as `data.generated` sets them."""
  return Tex5(split, section.sizes[split], section.scene_seed, section.image_size)


DATASET = generated.generated_dataset(scenes, CLASS_NAMES)
