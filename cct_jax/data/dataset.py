"""What a dataset module declares to join the factory, and the helpers they share.

A dataset module (voc.py, camvid.py, ...) defines a `Dataset`: its classes, evaluation
splits, config defaults, the fields of its own config section and its source factory.
factory.py lists each one in its registry, one line per dataset name.
"""

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cct_jax.data import sources

TRAIN_SPLITS = ('train_labelled', 'train_unlabelled')


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset as the factory sees it.

  make_source(cfg, split, *, check_files, keep_masks): the random-access source of
    'train_labelled', 'train_unlabelled' or one of the evaluation splits, for data config
    `cfg` (see `factory.make_source`).
  split_rule(cfg): one line saying which rule chose the labelled images.
  class_names: the names, or `names(cfg)` for data that lists its own; None numbers the
    classes up to `data.num_classes`.
  eval_splits: the evaluation splits, the last one reported; or `splits(cfg)`, those
    the data holds.
  annotated_labels(cfg, ids): {id: bool (num_classes,)}, the classes in each image as the
    dataset's own annotations list them (`data.image_labels='annotations'`); None where
    it has no such annotations.
  defaults: the common data fields whose default differs from `factory.COMMON_DEFAULTS`.
  section, section_defaults: the name of the dataset's own config section, `data.<section>`,
    and its fields; only the configured dataset's section is in a data config.
  """
  make_source: Callable
  split_rule: Callable[..., str]
  class_names: Sequence[str] | Callable[..., Sequence[str]] | None
  eval_splits: Sequence[str] | Callable[..., Sequence[str]]
  annotated_labels: Callable[..., dict] | None = None
  defaults: Mapping = dataclasses.field(default_factory=dict)
  section: str = ''
  section_defaults: Mapping = dataclasses.field(default_factory=dict)


def fixed_size(height: int, width: int, num_labelled: int) -> dict:
  """Defaults of the domain-adaptation datasets, trained at one size without
  augmentation (paper sec. 4.3)."""
  return dict(augment=False, resize_to=(height, width), num_labelled=num_labelled)


def stored_split(split: str) -> str:
  """The dataset's own split that `split` is read from: both training splits come from
  'train'."""
  return 'train' if split in TRAIN_SPLITS else split


def require_root(cfg) -> str:
  """`data.root`, which must be a folder."""
  if not os.path.isdir(cfg.root):
    raise sources.DataError([f'{cfg.root or "data.root"}: {cfg.name} folder does not exist '
                             '(set data.root)'])
  return cfg.root


def seeded_rule(cfg, pool: str) -> str:
  """The split rule of `sources.seeded_split` drawing from `pool`."""
  count = 'all' if cfg.num_labelled < 0 else str(cfg.num_labelled)
  return (f'{count} labelled drawn by data.split_seed={cfg.split_seed} from {pool}; '
          'the rest unlabelled')


def seeded_items(items: Sequence[sources.Item], split: str, cfg,
                 keep_masks: bool) -> list[sources.Item]:
  """'train_labelled' or 'train_unlabelled' of a folder's training items: a seeded draw
  from the items with masks; the unlabelled set is all the rest, with masks only if
  `keep_masks`."""
  pool = [i for i in items if i.mask is not None]
  extra = [i for i in items if i.mask is None]
  labelled, unlabelled = sources.seeded_split(len(pool), cfg.num_labelled, cfg.split_seed)
  if split == 'train_labelled':
    return [pool[i] for i in labelled]
  unlabelled = [pool[i] for i in unlabelled] + extra
  return unlabelled if keep_masks else sources.without_masks(unlabelled)


def folder_source(cfg, split: str, folder_items: Callable, label_map: np.ndarray, *,
                  check_files: bool, keep_masks: bool) -> sources.FileSource:
  """The source of a dataset stored as one folder of files per split under `data.root`;
  `folder_items(root, split)` lists a split's files."""
  items = folder_items(require_root(cfg), stored_split(split))
  if split in TRAIN_SPLITS:
    items = seeded_items(items, split, cfg, keep_masks)
  return sources.FileSource(items, label_map, check_files)
