"""From a data config to sources and transforms (the grain pipelines over them:
pipeline.py). Imports no data-loading library, so that configs load where none is installed.

Every dataset offers the splits 'train_labelled', 'train_unlabelled' (no masks) and its
evaluation splits (`eval_splits`). Datasets are plug-ins: a module declares a
`dataset.Dataset` (classes, evaluation splits, defaults, its config section, its source
factory) and `DATASETS` below names it, one line each. `default_data_config(name)` holds
the fields common to all datasets, set to the paper's settings for that dataset, and the
dataset's own section:

  name                     a key of DATASETS
  root                     dataset folder (see each dataset module's docstring)
  export_name, export_dir  read every split from this TFDS export of the dataset
                           (tools/export_tfds.py, for multi-host reading) in that TFDS
                           data dir, not from root ('': the dataset's own files)
  num_classes              must match the dataset (checked)
  num_labelled, split_seed labelled images (-1: all of the labelled pool), and the seed
                           of the draw where the dataset draws them (`split_rule` says
                           which rule chose them)
  augment                  True: rescale (base_size x scale_range; base_size 0 = none),
                           pad, crop_size crop, flip (paper sec. 4.3 for VOC); False:
                           resize to resize_to
  mean, std                normalisation (ImageNet by default)
  batch_size_labelled, batch_size_unlabelled   global batch sizes
  labelled_replay          True: each epoch (a pass over the unlabelled set) replays the
                           labelled batches of its first labelled pass, as the authors'
                           `itertools.cycle`; False: every labelled pass is reshuffled and
                           re-augmented (pipeline.py)
  shuffle_seed, num_workers, read_threads, prefetch   the grain pipeline; -1 workers or
                           threads: chosen from the host's cores (`pipeline.input_workers`)
  eval_batch_size, eval_bucket   eval: whole images per device and step, padded into a
                           few canvas sizes (eval_batches.py)
  image_labels             weak labels (sec. 3.3) of the unlabelled set: a file,
                           'annotations' (the dataset's own, VOC's XML files), or '' = from
                           its masks (see weak.py)
  pseudo_labels            a folder of pseudo-label PNGs (--mode=pseudo_labels): the
                           unlabelled stream yields them as masks, for the weak loss
  <section>                the dataset's own fields, only the configured dataset's:
                           voc (voc.py), cityscapes (cityscapes.py), generated (tex5,
                           fashion5, fashion11: generated.py)
"""

import functools

import ml_collections

from cct_jax import errors
from cct_jax.data import (camvid, cityscapes, dataset, fashion5, folder, sources, sunrgbd,
                          tex5, tfds_source, transforms, voc, weak)

TRAIN_SPLITS = dataset.TRAIN_SPLITS
AUTO = -1  # data.num_workers / data.read_threads: chosen from the host's cores.

DATASETS = {
    'voc': voc.DATASET,
    'cityscapes': cityscapes.DATASET,
    'camvid': camvid.DATASET,
    'sun': sunrgbd.DATASET,
    'folder': folder.DATASET,
    'tex5': tex5.DATASET,
    'fashion5': fashion5.FIVE,
    'fashion11': fashion5.FINE,
}

# The fields of every data config, set to VOC's values (paper sec. 4.3 and the authors'
# VOC config, github.com/yassouali/CCT configs/config.json), but for its image-level
# labels, which only VOC has annotations for (voc.py).
COMMON_DEFAULTS = dict(
    name='voc', root='', export_name='', export_dir='', num_classes=21, num_labelled=1464,
    split_seed=0,
    augment=True, crop_size=320, base_size=400, scale_range=(0.5, 2.0), flip=True,
    resize_to=(0, 0), mean=transforms.IMAGENET_MEAN, std=transforms.IMAGENET_STD,
    batch_size_labelled=10, batch_size_unlabelled=10, labelled_replay=True,
    shuffle_seed=0, num_workers=AUTO, read_threads=AUTO, prefetch=4,
    eval_batch_size=1, eval_bucket=128, image_labels='', pseudo_labels='')


def _registered(name: str) -> dataset.Dataset:
  if name not in DATASETS:
    raise errors.UserError(f'unknown dataset data.name={name!r}; choose one of {tuple(DATASETS)}')
  return DATASETS[name]


def default_data_config(name: str = 'voc') -> ml_collections.ConfigDict:
  """Every field of a data config for dataset `name`, with the paper's settings for it."""
  registered = _registered(name)
  cfg = ml_collections.ConfigDict({**COMMON_DEFAULTS, **registered.defaults, 'name': name})
  if registered.section:
    cfg[registered.section] = dict(registered.section_defaults)
  if registered.class_names is not None and not callable(registered.class_names):
    cfg.num_classes = len(registered.class_names)
  return cfg


def _field_homes(field: str) -> list[str]:
  """Where `field` lives in the sections of the datasets that have it."""
  return sorted({f'data.{d.section}.{field} ({name})' for name, d in DATASETS.items()
                 if field in d.section_defaults})


def _dataset(cfg) -> dataset.Dataset:
  """The configured dataset, after checking that `cfg` holds exactly its fields."""
  registered = _registered(cfg.name)
  expected = set(COMMON_DEFAULTS) | ({registered.section} if registered.section else set())
  problems = []
  for field in sorted(set(cfg.keys()) - expected):
    homes = _field_homes(field)
    problems.append(f'data.{field} is not a field of {cfg.name}' +
                    (f'; it is {", ".join(homes)}' if homes else ''))
  problems += [f'data.{field} is missing' for field in sorted(expected - set(cfg.keys()))]
  if registered.section in cfg:
    section = cfg[registered.section]
    problems += [f'data.{registered.section}.{field} is not a field of {cfg.name}'
                 for field in sorted(set(section.keys()) - set(registered.section_defaults))]
    problems += [f'data.{registered.section}.{field} is missing'
                 for field in sorted(set(registered.section_defaults) - set(section.keys()))]
  if problems:
    raise errors.UserError(
        f'data config of {cfg.name!r}: ' + '; '.join(problems) + '. A data config holds '
        f"the common fields and its dataset's own section; make it with "
        f"default_data_config({cfg.name!r}) rather than by changing data.name (config "
        'files that offer several datasets take the dataset as their argument).')
  return registered


def check_data_config(cfg) -> None:
  """Raises ValueError naming every field `cfg` lacks or has in excess for its dataset
  (a typo, or another dataset's field)."""
  _dataset(cfg)


def class_names(cfg) -> tuple[str, ...]:
  """The class names of the configured dataset (numbers where the data has none)."""
  names = _dataset(cfg).class_names
  if callable(names):
    return tuple(names(cfg))
  return tuple(names) if names else tuple(str(c) for c in range(cfg.num_classes))


def eval_splits(cfg) -> tuple[str, ...]:
  """The evaluation splits of the configured dataset (the last one is reported)."""
  splits = _dataset(cfg).eval_splits
  if cfg.export_name:
    return tfds_source.exported_eval_splits(cfg.export_name, cfg.export_dir)
  return tuple(splits(cfg) if callable(splits) else splits)


def split_rule(cfg) -> str:
  """One line saying which rule chose the labelled images, for logs and summaries."""
  if cfg.export_name:
    return (f'the labelled set stored in the export {cfg.export_name!r} '
            '(tools/export_tfds.py)')
  return _dataset(cfg).split_rule(cfg)


def make_source(cfg, split: str, *, check_files: bool = True, keep_masks: bool = False):
  """The random-access source of `split` ('train_labelled', 'train_unlabelled', or one of
  `eval_splits(cfg)`) for data config `cfg`. Folder datasets check that every listed
  file exists unless `check_files` is False (then reading a missing one fails).
  `keep_masks`: unlabelled images keep the masks the dataset has for them (to score
  pseudo-labels, or derive image-level labels), else they have none."""
  registered = _dataset(cfg)
  splits = TRAIN_SPLITS + eval_splits(cfg)
  if split not in splits:
    raise errors.UserError(f'{cfg.name} has no split {split!r}; it has {splits}')
  if len(class_names(cfg)) != cfg.num_classes:
    raise errors.UserError(f'data.num_classes={cfg.num_classes} but {cfg.name} has '
                           f'{len(class_names(cfg))} classes')
  if not cfg.export_name:
    return registered.make_source(cfg, split, check_files=check_files,
                                  keep_masks=keep_masks)
  source = tfds_source.exported_source(cfg.export_name, cfg.export_dir, split,
                                       num_classes=cfg.num_classes, keep_masks=keep_masks)
  if split == 'train_labelled' and cfg.num_labelled not in (-1, len(source)):
    raise errors.UserError(f'data.num_labelled={cfg.num_labelled} but the export '
                           f'{cfg.export_name!r} holds {len(source)} labelled images')
  return source


def make_weak_source(cfg, *, keep_masks: bool = False):
  """The weak set of sec. 3.3, the unlabelled images with their image-level labels
  ('image_labels', as `data.image_labels` says: see weak.py)."""
  from_masks = not cfg.image_labels
  source = make_source(cfg, 'train_unlabelled', keep_masks=keep_masks or from_masks)
  if from_masks:
    return weak.WithImageLabels(source, cfg.num_classes)
  ids = sources.example_ids(source)
  if cfg.image_labels == weak.ANNOTATIONS:
    labels = _annotated_labels(cfg, ids)
  else:
    known = set(ids) | set(sources.example_ids(make_source(cfg, 'train_labelled')))
    labels = weak.read_image_labels(cfg.image_labels, cfg.num_classes, known)
  return weak.WithImageLabels(source, cfg.num_classes, labels, cfg.image_labels)


def _annotated_labels(cfg, ids: list[str]) -> dict:
  read = _dataset(cfg).annotated_labels
  if read is None:
    raise errors.UserError(f"data.image_labels={weak.ANNOTATIONS!r}: {cfg.name} has no "
                           "annotations of the classes in each image; give a label file, or "
                           "'' to take them from the masks")
  return read(cfg, ids)


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


def eval_transform(cfg):
  """`transform(example)` of the evaluation batches: normalised, resized for fixed-size
  datasets, not padded."""
  return functools.partial(transforms.eval_transform, mean=cfg.mean, std=cfg.std,
                           size=None if cfg.augment else tuple(cfg.resize_to))
