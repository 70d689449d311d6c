"""A custom dataset in plain folders.

Expected layout (`root`):

  classes.txt                        one class name per line; line i names class id i
  images/{train,val,test}/<name>.jpg (or .jpeg / .png; val and test are optional)
  masks/{train,val,test}/<name>.png  index PNGs (palette or greyscale) of class ids, 255
                                     for unlabelled pixels. A training image without a mask
                                     is unlabelled; every val and test image needs one.
"""

import glob
import os

from cct_jax.data import sources

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


def class_names(root: str) -> list[str]:
  path = os.path.join(root, 'classes.txt')
  if not os.path.isfile(path):
    raise sources.DataError([f'{path}: class list does not exist (one name per line)'])
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def has_split(root: str, split: str) -> bool:
  return os.path.isdir(os.path.join(root, 'images', split))


def folder_items(root: str, split: str) -> list[sources.Item]:
  """Every image of `split`; training images without a mask file get `mask=None`."""
  image_dir = os.path.join(root, 'images', split)
  images = sorted(p for p in glob.glob(os.path.join(image_dir, '*'))
                  if p.lower().endswith(IMAGE_EXTENSIONS))
  if not images:
    raise sources.DataError([f'{image_dir}: no images ({", ".join(IMAGE_EXTENSIONS)})'])
  items = []
  for image in images:
    name = os.path.splitext(os.path.basename(image))[0]
    mask = os.path.join(root, 'masks', split, f'{name}.png')
    unlabelled = split == 'train' and not os.path.isfile(mask)
    items.append(sources.Item(name, image, None if unlabelled else mask))
  return items
