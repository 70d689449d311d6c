"""Cityscapes fine annotations, 19 training classes.

Expected folder layout (the official zips leftImg8bit_trainvaltest and gtFine_trainvaltest
unpacked side by side in `root`):

  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The same data prepared by TFDS (`cityscapes/semantic_segmentation`, splits train /
validation / test, features image_left, segmentation_label, image_id) is read with
`tfds_source.TfdsSource(..., keys=TFDS_KEYS)`. Masks store the 34 labelIds; the 19 used
for training become trainIds 0-18 and all others IGNORE_INDEX (as cityscapesScripts).
"""

import glob
import os

import numpy as np

from cct_jax.data import sources

NUM_CLASSES = 19
CLASS_NAMES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
    'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck',
    'bus', 'train', 'motorcycle', 'bicycle')
# labelId of each trainId, from cityscapesScripts' labels.py.
TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
NUM_LABEL_IDS = 34
TFDS_NAME = 'cityscapes/semantic_segmentation'
TFDS_KEYS = ('image_left', 'segmentation_label', 'image_id')
TFDS_SPLITS = {'train': 'train', 'val': 'validation', 'test': 'test'}


def label_map() -> np.ndarray:
  """labelIds 0-33 -> trainIds; 255 (license plates in some exports) stays ignored."""
  lut = np.full(256, -1, np.int32)
  lut[:NUM_LABEL_IDS] = sources.IGNORE_INDEX
  lut[list(TRAIN_LABEL_IDS)] = np.arange(NUM_CLASSES)
  lut[sources.IGNORE_INDEX] = sources.IGNORE_INDEX
  return lut


def folder_items(root: str, split: str) -> list[sources.Item]:
  """Every image of `split` ('train', 'val' or 'test') with its labelIds mask."""
  image_dir = os.path.join(root, 'leftImg8bit', split)
  if not os.path.isdir(image_dir):
    raise sources.DataError([f'{image_dir}: Cityscapes image folder does not exist'])
  items = []
  for image in sorted(glob.glob(os.path.join(image_dir, '*', '*_leftImg8bit.png'))):
    image_id = os.path.basename(image)[:-len('_leftImg8bit.png')]
    city = image_id.split('_')[0]
    mask = os.path.join(root, 'gtFine', split, city, f'{image_id}_gtFine_labelIds.png')
    items.append(sources.Item(image_id, image, mask))
  if not items:
    raise sources.DataError([f'{image_dir}: no <city>/*_leftImg8bit.png images'])
  return items
