"""From a data config to sources, transforms and pipelines.

Every dataset offers the splits 'train_labelled', 'train_unlabelled' (no masks) and its
evaluation splits (`eval_splits`). `default_data_config(name)` holds every field, with the
paper's settings for that dataset (SPEC 4 and 6):

  name                     voc | cityscapes | cityscapes_tfds | camvid | sun | folder |
                           tfds (written by tools/export_tfds.py) | tex5 | fashion5 |
                           fashion11 (fashion5's scenes with the 10 fine classes)
  root                     dataset folder (see each layout module's docstring)
  num_classes              must match the dataset (checked)
  num_labelled, split_seed labelled images, drawn by the seed from the labelled pool
                           (-1: all of it); VOC with split_dir reads the authors' files
  split_dir, train_list, mask_dir   VOC only (voc.py)
  scene_seed, sizes, labelled_pool, image_size, idx_dir   generated data (tex5, fashion5)
  tfds_name, tfds_dir      TFDS datasets (tfds_source.py)
  augment                  True: rescale (base_size x scale_range; base_size 0 = none),
                           pad, crop_size crop, flip; False: resize to resize_to
  mean, std                normalisation (ImageNet by default)
  batch_size_labelled, batch_size_unlabelled   global batch sizes
  shuffle_seed, num_workers, read_threads, prefetch   the grain pipeline
  eval_batch_size, eval_pad_to   eval: 1 whole image at a time, or padded batches
  image_labels             weak labels (sec. 3.3) of the unlabelled set, a file; '' = from
                           its masks (see weak.py)
  pseudo_labels            a folder of pseudo-label PNGs (--mode=pseudo_labels): the
                           unlabelled stream yields them as masks, for the weak loss
"""

import dataclasses
import functools
import os

import grain
import ml_collections
import numpy as np

from cct_jax.data import (camvid, cityscapes, fashion5, folder, generated, pipeline,
                          sources, sunrgbd, tex5, tfds_source, transforms, voc, weak)

TRAIN_SPLITS = ('train_labelled', 'train_unlabelled')


@dataclasses.dataclass(frozen=True)
class _Dataset:
  """What the factory knows of a dataset: its classes (None: from the data), evaluation
  splits (the last one is reported) and config defaults that differ from VOC's."""
  class_names: tuple[str, ...] | None
  eval_splits: tuple[str, ...]
  defaults: dict


# Paper sec. 4.3: the domain-adaptation datasets train at a fixed size, no augmentation.
def _fixed_size(height, width, num_labelled):
  return dict(augment=False, resize_to=(height, width), num_labelled=num_labelled)


# SPEC 6: 64x64 scenes, a 64 crop without rescaling (so only flips), 25 labels.
_SCENES = dict(crop_size=64, base_size=0, num_labelled=25)

DATASETS = {
    'voc': _Dataset(voc.CLASS_NAMES, ('val',), {}),
    'cityscapes': _Dataset(cityscapes.CLASS_NAMES, ('val',), _fixed_size(512, 1024, 100)),
    'cityscapes_tfds': _Dataset(cityscapes.CLASS_NAMES, ('val',), dict(
        _fixed_size(512, 1024, 100), tfds_name=cityscapes.TFDS_NAME)),
    'camvid': _Dataset(camvid.CLASS_NAMES, ('val', 'test'), _fixed_size(360, 480, 100)),
    'sun': _Dataset(sunrgbd.CLASS_NAMES, ('test',), _fixed_size(480, 640, 1500)),
    'folder': _Dataset(None, ('val', 'test'), {}),  # The eval splits that exist.
    'tfds': _Dataset(None, ('val', 'test'), {}),  # The eval splits that were exported.
    'tex5': _Dataset(tex5.CLASS_NAMES, ('val', 'test'), _SCENES),
    'fashion5': _Dataset(fashion5.FIVE_CLASS_NAMES, ('val', 'test'), _SCENES),
    'fashion11': _Dataset(fashion5.FINE_CLASS_NAMES, ('val', 'test'), _SCENES),
}
_LABEL_MAPS = {'cityscapes': cityscapes.label_map, 'cityscapes_tfds': cityscapes.label_map,
               'camvid': camvid.label_map, 'sun': sunrgbd.label_map}
_LAYOUTS = {'cityscapes': cityscapes, 'camvid': camvid, 'sun': sunrgbd, 'folder': folder}


def default_data_config(name: str = 'voc') -> ml_collections.ConfigDict:
  """Every data field, set for dataset `name` (VOC's SPEC 4 settings by default)."""
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; choose one of {tuple(DATASETS)}')
  dataset = DATASETS[name]
  cfg = ml_collections.ConfigDict(dict(
      name=name, root='', num_classes=21, num_labelled=1464, split_seed=0,
      split_dir='', train_list='ImageSets/Segmentation/train_aug.txt',
      mask_dir='SegmentationClassAug',
      scene_seed=0, sizes=dict(train=4500, val=200, test=500), labelled_pool=500,
      image_size=64, idx_dir=fashion5.DEFAULT_IDX_DIR,
      tfds_name='', tfds_dir='',
      augment=True, crop_size=320, base_size=400, scale_range=(0.5, 2.0), flip=True,
      resize_to=(0, 0),
      mean=transforms.IMAGENET_MEAN, std=transforms.IMAGENET_STD,
      batch_size_labelled=10, batch_size_unlabelled=10,
      shuffle_seed=0, num_workers=0, read_threads=2, prefetch=4,
      eval_batch_size=1, eval_pad_to=(0, 0),
      image_labels='', pseudo_labels='',
  ))
  cfg.update(dataset.defaults)
  if dataset.class_names:
    cfg.num_classes = len(dataset.class_names)
  return cfg


def _dataset(cfg) -> _Dataset:
  if cfg.name not in DATASETS:
    raise ValueError(f'unknown dataset data.name={cfg.name!r}; choose one of '
                     f'{tuple(DATASETS)}')
  return DATASETS[cfg.name]


def class_names(cfg) -> tuple[str, ...]:
  """The class names of the configured dataset (numbers where the data has none)."""
  if cfg.name == 'folder':
    return tuple(folder.class_names(cfg.root))
  return _dataset(cfg).class_names or tuple(str(c) for c in range(cfg.num_classes))


def eval_splits(cfg) -> tuple[str, ...]:
  """The evaluation splits of the configured dataset (the last one is reported)."""
  splits = _dataset(cfg).eval_splits
  if cfg.name == 'folder':
    return tuple(s for s in splits if folder.has_split(cfg.root, s))
  if cfg.name == 'tfds':
    stored = tfds_source.split_names(cfg.tfds_name, cfg.tfds_dir)
    return tuple(s for s in splits if s in stored)
  return splits


def _labelled_pool_split(items: list[sources.Item], split: str, cfg,
                         keep_masks: bool) -> list[sources.Item]:
  """A seeded split of the items that have masks; the unlabelled set is all the rest."""
  pool = [i for i in items if i.mask is not None]
  extra = [i for i in items if i.mask is None]
  labelled, unlabelled = sources.seeded_split(len(pool), cfg.num_labelled, cfg.split_seed)
  if split == 'train_labelled':
    return [pool[i] for i in labelled]
  unlabelled = [pool[i] for i in unlabelled] + extra
  return unlabelled if keep_masks else sources.without_masks(unlabelled)


def _file_source(cfg, split: str, label_map: np.ndarray, check_files: bool,
                 keep_masks: bool) -> sources.FileSource:
  if cfg.name == 'voc':
    items = voc.split_items(cfg.root, split, num_labelled=cfg.num_labelled,
                            split_seed=cfg.split_seed, split_dir=cfg.split_dir,
                            train_list=cfg.train_list, mask_dir=cfg.mask_dir,
                            keep_masks=keep_masks)
  else:
    items = _LAYOUTS[cfg.name].folder_items(
        cfg.root, 'train' if split in TRAIN_SPLITS else split)
    if split in TRAIN_SPLITS:
      items = _labelled_pool_split(items, split, cfg, keep_masks)
  return sources.FileSource(items, label_map, check_files)


def _generated_source(cfg, split: str, keep_masks: bool):
  official = 'train' if split in TRAIN_SPLITS else split
  if cfg.name == 'tex5':
    source = tex5.Tex5(official, cfg.sizes[official], cfg.scene_seed, cfg.image_size)
  else:
    class_map = {'fashion5': fashion5.FIVE_CLASS_MAP,
                 'fashion11': fashion5.FINE_CLASS_MAP}[cfg.name]
    source = fashion5.Fashion5(official, cfg.sizes[official], cfg.scene_seed,
                               idx_dir=cfg.idx_dir, class_map=class_map,
                               image_size=cfg.image_size)
  if split not in TRAIN_SPLITS:
    return source
  return generated.protocol_subset(source, split, num_labelled=cfg.num_labelled,
                                   labelled_pool=cfg.labelled_pool,
                                   split_seed=cfg.split_seed, keep_masks=keep_masks)


def _tfds_source(cfg, split: str, label_map: np.ndarray, keep_masks: bool):
  with_masks = split != 'train_unlabelled' or keep_masks
  if cfg.name == 'tfds':  # Exported splits are stored under our split names.
    return tfds_source.TfdsSource(cfg.tfds_name, split, data_dir=cfg.tfds_dir,
                                  label_map=label_map, with_masks=with_masks)
  official = cityscapes.TFDS_SPLITS['train' if split in TRAIN_SPLITS else split]
  source = tfds_source.TfdsSource(cfg.tfds_name, official, data_dir=cfg.tfds_dir,
                                  label_map=label_map, keys=cityscapes.TFDS_KEYS,
                                  with_masks=with_masks)
  if split not in TRAIN_SPLITS:
    return source
  labelled, unlabelled = sources.seeded_split(len(source), cfg.num_labelled, cfg.split_seed)
  return sources.Subset(source, labelled if split == 'train_labelled' else unlabelled)


def make_source(cfg, split: str, *, check_files: bool = True, keep_masks: bool = False):
  """The random-access source of `split` ('train_labelled', 'train_unlabelled', or one of
  `eval_splits(cfg)`) for data config `cfg`. Folder datasets check that every listed
  file exists unless `check_files` is False (then reading a missing one fails).
  `keep_masks`: unlabelled images keep the masks the dataset has for them (to score
  pseudo-labels, or derive image-level labels), else they have none."""
  if cfg.name in ('voc', *_LAYOUTS) and not os.path.isdir(cfg.root):
    raise sources.DataError([f'{cfg.root or "data.root"}: {cfg.name} folder does not exist '
                             '(set data.root)'])
  splits = TRAIN_SPLITS + eval_splits(cfg)
  if split not in splits:
    raise ValueError(f'{cfg.name} has no split {split!r}; it has {splits}')
  if len(class_names(cfg)) != cfg.num_classes:
    raise ValueError(f'data.num_classes={cfg.num_classes} but {cfg.name} has '
                     f'{len(class_names(cfg))} classes')
  if cfg.name in ('tex5', 'fashion5', 'fashion11'):
    return _generated_source(cfg, split, keep_masks)
  label_map = (_LABEL_MAPS[cfg.name]() if cfg.name in _LABEL_MAPS
               else sources.index_label_map(cfg.num_classes))
  if cfg.name in ('tfds', 'cityscapes_tfds'):
    return _tfds_source(cfg, split, label_map, keep_masks)
  return _file_source(cfg, split, label_map, check_files, keep_masks)


def make_weak_source(cfg, *, keep_masks: bool = False):
  """The weak set of sec. 3.3, the unlabelled images with their image-level labels
  ('image_labels', from the file `data.image_labels`, else from their masks)."""
  source = make_source(cfg, 'train_unlabelled', keep_masks=keep_masks or not cfg.image_labels)
  if not cfg.image_labels:
    return weak.WithImageLabels(source, cfg.num_classes)
  known = set(sources.example_ids(source)) | set(
      sources.example_ids(make_source(cfg, 'train_labelled')))
  labels = weak.read_image_labels(cfg.image_labels, cfg.num_classes, known)
  return weak.WithImageLabels(source, cfg.num_classes, labels, cfg.image_labels)


def make_classification_source(cfg):
  """Images with image-level labels for classification pre-training: the labelled set
  (labels from its masks) then the weak set."""
  labelled = weak.WithImageLabels(make_source(cfg, 'train_labelled'), cfg.num_classes)
  return weak.Concatenated(labelled, make_weak_source(cfg))


def train_transform(cfg):
  """`transform(example, rng)` of the training streams."""
  if cfg.augment:
    return functools.partial(
        transforms.scale_crop_flip, crop_size=cfg.crop_size, mean=cfg.mean, std=cfg.std,
        base_size=cfg.base_size, scale_range=cfg.scale_range, flip=cfg.flip)
  return functools.partial(transforms.resize_only, size=tuple(cfg.resize_to),
                           mean=cfg.mean, std=cfg.std)


def _pad_size(cfg) -> tuple[int, int] | None:
  return tuple(cfg.eval_pad_to) if all(cfg.eval_pad_to) else None


def eval_transform(cfg):
  """`transform(example)` of the evaluation batches."""
  return functools.partial(transforms.eval_transform, mean=cfg.mean, std=cfg.std,
                           size=None if cfg.augment else tuple(cfg.resize_to),
                           pad_size=_pad_size(cfg))


def make_train_streams(cfg, *, device_count: int = 1, process_index: int = 0,
                       process_count: int = 1,
                       start_step: int = 0) -> pipeline.TrainStreams:
  """The labelled and unlabelled training iterators of this process, from `start_step`.

  `device_count` is the global number of devices; each global batch must divide over
  them. Pass `jax.device_count()`, `jax.process_index()`, `jax.process_count()`. Either
  restore the iterators' state, or resume with `start_step` = the restored step.
  """
  streams = []
  for stream, (split, global_batch) in enumerate(
      (('train_labelled', cfg.batch_size_labelled),
       ('train_unlabelled', cfg.batch_size_unlabelled))):
    batch_size = pipeline.per_process_batch_size(
        global_batch, device_count=device_count, process_count=process_count,
        name=f'data.batch_size_{split.removeprefix("train_")}')
    source = make_source(cfg, split)
    if split == 'train_unlabelled' and cfg.pseudo_labels:
      source = weak.WithPseudoLabels(source, cfg.pseudo_labels, cfg.num_classes)
    ds = pipeline.train_dataset(
        source, train_transform(cfg), batch_size=batch_size,
        seed=pipeline.stream_seed(cfg.shuffle_seed, stream),
        process_index=process_index, process_count=process_count, start_step=start_step)
    streams.append(iter(_prefetched(ds, cfg)))
  return pipeline.TrainStreams(*streams)


def make_eval_dataset(cfg, split: str, *, process_index: int = 0,
                      process_count: int = 1) -> grain.IterDataset:
  """A re-iterable dataset of `split`'s evaluation batches ('image', 'mask', 'valid'; see
  `pipeline.eval_dataset`): `for batch in ds: ...` at every evaluation."""
  ds = pipeline.eval_dataset(make_source(cfg, split), eval_transform(cfg),
                             batch_size=cfg.eval_batch_size, pad_size=_pad_size(cfg),
                             process_index=process_index, process_count=process_count)
  return _prefetched(ds, cfg)


def _prefetched(ds, cfg) -> grain.IterDataset:
  return pipeline.prefetched(ds, num_workers=cfg.num_workers,
                             read_threads=cfg.read_threads, prefetch=cfg.prefetch)
