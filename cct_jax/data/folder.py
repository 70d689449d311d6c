"""A custom dataset in plain folders.

Expected layout (`root`):

  classes.txt                        one class name per line; line i names class id i
  images/{train,val,test}/<name>.jpg (or .jpeg / .png; val and test are optional)
  masks/{train,val,test}/<name>.png  index PNGs (palette or greyscale) of class ids, 255
                                     for unlabelled pixels. A training image without a mask
                                     is unlabelled; every val and test image needs one.

The labelled images are a seeded draw from the training images that have masks.
"""

import glob
import os

from cct_jax.data import dataset, sources

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


def class_names(root: str) -> list[str]:
  """The names listed in `root`/classes.txt."""
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


def make_source(cfg, split: str, *, check_files: bool = True, keep_masks: bool = False):
  return dataset.folder_source(cfg, split, folder_items,
                               sources.index_label_map(cfg.num_classes),
                               check_files=check_files, keep_masks=keep_masks)


DATASET = dataset.Dataset(
    make_source=make_source,
    split_rule=lambda cfg: dataset.seeded_rule(cfg, 'the training images with masks'),
    class_names=lambda cfg: class_names(dataset.require_root(cfg)),
    eval_splits=lambda cfg: tuple(s for s in ('val', 'test')
                                  if has_split(dataset.require_root(cfg), s)))
