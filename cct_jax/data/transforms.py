"""Per-example transforms (paper sec. 4.3): random rescale, pad, crop and flip; fixed
resize; eval.

Each takes a source example (uint8 'image', optional int32 'mask') and returns float32
'image' normalised by mean/std and, when the example has one, an int32 'mask'. Unlabelled
examples take the same path without a mask; a mask never changes what the random draws
are, so labelled and unlabelled images are augmented alike.
"""

import numpy as np
from PIL import Image

from cct_jax.data.sources import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise(image: np.ndarray, mean, std) -> np.ndarray:
  """uint8 RGB -> float32 (image / 255 - mean) / std."""
  scale = np.float32(1.0 / 255.0)
  return ((image.astype(np.float32) * scale - np.asarray(mean, np.float32))
          / np.asarray(std, np.float32))


def resize(example: dict, height: int, width: int) -> dict:
  """Image bicubic, mask nearest, to (height, width)."""
  out = dict(example)
  out['image'] = np.asarray(Image.fromarray(example['image']).resize(
      (width, height), Image.Resampling.BICUBIC))
  if 'mask' in example:
    mask = Image.fromarray(example['mask'].astype(np.uint8))  # Ids are <= 255.
    out['mask'] = np.asarray(mask.resize((width, height), Image.Resampling.NEAREST),
                             np.int32)
  return out


def rescale_long_side(example: dict, long_side: int) -> dict:
  """Resizes so that the longer side is `long_side`, keeping the aspect ratio (as the
  authors' code, github.com/yassouali/CCT, does)."""
  h, w = example['image'].shape[:2]
  if h < w:
    return resize(example, int(long_side * h / w + 0.5), long_side)
  return resize(example, long_side, int(long_side * w / h + 0.5))


def pad_to(example: dict, height: int, width: int, mean) -> dict:
  """Pads bottom and right up to at least (height, width): image with the mean colour
  (about 0 after normalisation), mask with IGNORE_INDEX (so padding is never scored)."""
  h, w = example['image'].shape[:2]
  pad_h, pad_w = max(height - h, 0), max(width - w, 0)
  if not pad_h and not pad_w:
    return example
  out = dict(example)
  fill = np.round(np.asarray(mean) * 255.0).astype(np.uint8)
  out['image'] = np.empty((h + pad_h, w + pad_w, 3), np.uint8)
  out['image'][...] = fill
  out['image'][:h, :w] = example['image']
  if 'mask' in example:
    out['mask'] = np.pad(example['mask'], ((0, pad_h), (0, pad_w)),
                         constant_values=IGNORE_INDEX)
  return out


def finish(example: dict, mean, std) -> dict:
  """The training/eval output: normalised float32 image and the int32 mask if any."""
  out = {'image': normalise(example['image'], mean, std)}
  if 'mask' in example:
    out['mask'] = example['mask'].astype(np.int32)
  return out


def scale_crop_flip(example: dict, rng: np.random.Generator, *, crop_size: int,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD, base_size: int = 0,
                    scale_range=(0.5, 2.0), flip: bool = True) -> dict:
  """The VOC training augmentation: paper sec. 4.3 (random rescaling in [0.5, 2], crop,
  flip) with the authors' base size 400 (github.com/yassouali/CCT configs/config.json).

  With `base_size` > 0 the long side is resized to a random integer in
  [base_size * lo, base_size * hi] (VOC: [200, 800]); `base_size=0` keeps the size (the
  64x64 bundled data). Then pad to the crop, take a random crop_size x crop_size window,
  flip horizontally with probability 1/2 and normalise.
  """
  if base_size:
    low, high = (int(base_size * s) for s in scale_range)
    example = rescale_long_side(example, int(rng.integers(low, high, endpoint=True)))
  example = pad_to(example, crop_size, crop_size, mean)
  h, w = example['image'].shape[:2]
  top = int(rng.integers(0, h - crop_size, endpoint=True))
  left = int(rng.integers(0, w - crop_size, endpoint=True))
  window = (slice(top, top + crop_size), slice(left, left + crop_size))
  flipped = flip and rng.random() < 0.5
  out = {}
  for key in ('image', 'mask'):
    if key in example:
      crop = example[key][window]
      out[key] = crop[:, ::-1] if flipped else crop
  return finish(out, mean, std)


def resize_only(example: dict, rng: np.random.Generator, *, size: tuple[int, int],
                mean=IMAGENET_MEAN, std=IMAGENET_STD) -> dict:
  """Training without augmentation (Cityscapes, CamVid, SUN; paper 4.3): a fixed resize.

  Takes (and ignores) `rng` so that every training transform has one signature.
  """
  del rng
  return finish(resize(example, *size), mean, std)


def eval_transform(example: dict, *, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   size: tuple[int, int] | None = None) -> dict:
  """The whole image, normalised; resized to `size` for the datasets trained at a fixed
  size. Batches pad it (data/eval_batches.py)."""
  if size:
    example = resize(example, *size)
  return finish(example, mean, std)
