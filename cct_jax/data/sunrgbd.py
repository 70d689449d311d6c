"""SUN RGB-D, 13-class version (Handa et al.'s labels of the NYUv2 13 classes), RGB only.

Expected layout (`root`), images numbered from 000001:

  SUNRGBD-train_images/img-<n>.jpg     5285 training images
  SUNRGBD-test_images/img-<n>.jpg      5050 test images (the paper's evaluation split)
  train13labels/img13labels-<n>.png    index masks: 0 unknown (ignored), 1-13 classes
  test13labels/img13labels-<n>.png
"""

import functools
import glob
import os

from cct_jax.data import dataset, sources

NUM_CLASSES = 13
CLASS_NAMES = ('bed', 'books', 'ceiling', 'chair', 'floor', 'furniture', 'objects',
               'picture', 'sofa', 'table', 'tv', 'wall', 'window')
UNKNOWN = 0


def label_map():
  return sources.shifted_label_map(NUM_CLASSES, void=UNKNOWN)


def folder_items(root: str, split: str) -> list[sources.Item]:
  """Every image of `split` ('train' or 'test') with its mask."""
  image_dir = os.path.join(root, f'SUNRGBD-{split}_images')
  images = sorted(glob.glob(os.path.join(image_dir, 'img-*.jpg')))
  if not images:
    raise sources.DataError([f'{image_dir}: no SUN RGB-D images (img-*.jpg) found'])
  items = []
  for image in images:
    number = os.path.basename(image)[len('img-'):-len('.jpg')]
    mask = os.path.join(root, f'{split}13labels', f'img13labels-{number}.png')
    items.append(sources.Item(f'{split}-{number}', image, mask))
  return items


DATASET = dataset.Dataset(
    make_source=functools.partial(dataset.folder_source, folder_items=folder_items,
                                  label_map=label_map()),
    split_rule=lambda cfg: dataset.seeded_rule(cfg, 'the training images'),
    class_names=CLASS_NAMES, eval_splits=('test',),
    defaults=dataset.fixed_size(480, 640, num_labelled=1500))
