"""Cityscapes fine annotations, 19 training classes.

Expected folder layout (the official zips leftImg8bit_trainvaltest and gtFine_trainvaltest
unpacked side by side in `root`):

  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Or the same data prepared by TFDS (`cityscapes/semantic_segmentation`, splits train /
validation / test, features image_left, segmentation_label, image_id) in the TFDS data dir
`data.cityscapes.tfds_dir` (then `data.root` is not read). Masks store the 34 labelIds;
the 19 used for training become trainIds 0-18 and all others IGNORE_INDEX (as
cityscapesScripts). The labelled images are a seeded draw from the training split.
"""

import glob
import os

import numpy as np

from cct_jax.data import dataset, sources, tfds_source

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


def make_source(cfg, split: str, *, check_files: bool = True, keep_masks: bool = False):
  tfds_dir = cfg.cityscapes.tfds_dir
  if not tfds_dir:
    return dataset.folder_source(cfg, split, folder_items, label_map(),
                                 check_files=check_files, keep_masks=keep_masks)
  source = tfds_source.TfdsSource(
      TFDS_NAME, TFDS_SPLITS[dataset.stored_split(split)], data_dir=tfds_dir,
      label_map=label_map(), keys=TFDS_KEYS,
      with_masks=split != 'train_unlabelled' or keep_masks)
  if split not in dataset.TRAIN_SPLITS:
    return source
  labelled, unlabelled = sources.seeded_split(len(source), cfg.num_labelled, cfg.split_seed)
  return sources.Subset(source, labelled if split == 'train_labelled' else unlabelled)


DATASET = dataset.Dataset(
    make_source=make_source,
    split_rule=lambda cfg: dataset.seeded_rule(cfg, 'the training split'),
    class_names=CLASS_NAMES, eval_splits=('val',),
    defaults=dataset.fixed_size(512, 1024, num_labelled=100),
    # '': the folders under data.root; else a TFDS data dir that holds TFDS_NAME.
    section='cityscapes', section_defaults=dict(tfds_dir=''))
