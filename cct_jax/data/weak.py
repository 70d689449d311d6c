"""Weak supervision data (paper sec. 3.3): image-level labels and pseudo-label masks.

Image-level labels say which classes an image contains. They come from one of
  - a text file (`data.image_labels=labels.txt`), one image per line: its id, then the ids
    of the classes present, e.g. `2007_000032 1 15` (class ids of the dataset; listing the
    background is allowed and changes nothing; an image with only background is its id
    alone; blank lines and lines starting with # are skipped);
  - IRN / AffinityNet's `cls_labels.npy` (`data.image_labels=cls_labels.npy`), a pickled
    dict {image id: C - 1 floats}, entry i for class i + 1 (VOC: 20 foreground classes
    after the background 0);
  - the dataset's own annotations (`data.image_labels='annotations'`, VOC's default): the
    objects listed in VOC's Annotations/<id>.xml, from which IRN made cls_labels.npy
    (voc.py);
  - the masks, where the images have them (`data.image_labels=''`): the bundled scenes
    carry the item classes present this way, and the labelled set always does.
Examples gain 'image_labels': bool (num_classes,).

Pseudo-labels (`--mode=pseudo_labels`) are palette PNGs of class ids with 255 for unsure
pixels, one per image, `<folder>/<id>.png`; with `data.pseudo_labels=<folder>` the
unlabelled training stream reads them as its masks (the weak loss L_w, Eq. 6).
"""

import os

import numpy as np

from cct_jax.data import sources

ANNOTATIONS = 'annotations'  # data.image_labels: the dataset's own annotations


def present_classes(mask: np.ndarray, num_classes: int) -> np.ndarray:
  """bool (num_classes,): the classes with at least one pixel in `mask` (255 ignored)."""
  ids = mask[mask != sources.IGNORE_INDEX]
  return np.bincount(ids.ravel(), minlength=num_classes)[:num_classes] > 0


def _read_text(path: str, num_classes: int, known_ids) -> dict[str, np.ndarray]:
  labels, problems = {}, []
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      fields = line.split()
      if not fields or fields[0].startswith('#'):
        continue
      image_id, classes = fields[0], np.zeros(num_classes, bool)
      if known_ids is not None and image_id not in known_ids:
        problems.append(f'{path}:{number}: image id {image_id!r} is not a training image '
                        'of this dataset')
      for field in fields[1:]:
        if not field.isdigit() or int(field) >= num_classes:
          problems.append(f'{path}:{number}: {image_id}: class id {field!r} is not one of '
                          f'the {num_classes} classes (0-{num_classes - 1})')
        else:
          classes[int(field)] = True
      if image_id in labels:
        problems.append(f'{path}:{number}: image id {image_id!r} is listed twice')
      labels[image_id] = classes
  sources.raise_if_problems(problems)
  return labels


def _read_cls_labels(path: str, num_classes: int) -> dict[str, np.ndarray]:
  try:
    table = np.load(path, allow_pickle=True).item()
  except (OSError, ValueError, AttributeError) as e:
    raise sources.DataError([f'{path}: not a cls_labels.npy dict of image id -> '
                             f'{num_classes - 1} class flags ({e})']) from e
  labels, problems = {}, []
  for image_id, flags in table.items():
    flags = np.asarray(flags)
    if flags.shape != (num_classes - 1,) or not np.isin(flags, (0, 1)).all():
      problems.append(f'{path}: {image_id}: expected {num_classes - 1} flags of 0 or 1 (one '
                      f'per class after the background 0), got {flags.tolist()}')
      continue
    labels[str(image_id)] = np.concatenate([[False], flags.astype(bool)])
  sources.raise_if_problems(problems)
  return labels


def read_image_labels(path: str, num_classes: int,
                      known_ids=None) -> dict[str, np.ndarray]:
  """{image id: bool (num_classes,)} from a text file or a `cls_labels.npy` (see above).

  A text file is written for this dataset, so an id not in `known_ids` (when given) is an
  error; a cls_labels.npy covers all of VOC, whatever the split.
  """
  if not os.path.isfile(path):
    raise sources.DataError([f'{path}: image-level label file does not exist '
                             '(data.image_labels)'])
  if path.endswith('.npy'):
    return _read_cls_labels(path, num_classes)
  return _read_text(path, num_classes, known_ids)


class WithImageLabels:
  """`source`'s examples with 'image_labels': from `labels` (an id -> flags dict read from
  `path`, checked to cover every example) or, with labels=None, from each mask."""

  def __init__(self, source, num_classes: int, labels: dict | None = None, path: str = ''):
    self.source, self.num_classes, self.labels, self.path = source, num_classes, labels, path
    if labels is not None:
      missing = [i for i in sources.example_ids(source) if i not in labels]
      if missing:
        raise sources.DataError([
            f'{path}: no image-level labels for {len(missing)} image(s) of the weak set, '
            f'e.g. {missing[:5]}'])

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    example = self.source[index]
    if self.labels is not None:
      flags = self.labels[example['id']]
    elif 'mask' in example:
      flags = present_classes(example['mask'], self.num_classes)
    else:
      raise sources.DataError([f'{example["id"]}: no mask to derive image-level labels '
                               'from; give a label file (data.image_labels)'])
    return {**example, 'image_labels': flags}

  def __repr__(self) -> str:
    return f'WithImageLabels({self.source!r}, from {self.path or "masks"})'


class Concatenated:
  """The examples of several sources, one after the other."""

  def __init__(self, *parts):
    self.parts = parts
    self.ends = np.cumsum([len(p) for p in parts])

  def __len__(self) -> int:
    return int(self.ends[-1])

  def __getitem__(self, index: int) -> dict:
    part = int(np.searchsorted(self.ends, index, side='right'))
    return self.parts[part][index - (int(self.ends[part - 1]) if part else 0)]


def pseudo_label_path(directory: str, image_id: str) -> str:
  return os.path.join(directory, f'{image_id}.png')


class WithPseudoLabels:
  """`source`'s examples with 'mask' read from the pseudo-label PNGs in `directory`."""

  def __init__(self, source, directory: str, num_classes: int):
    self.source, self.directory = source, directory
    self.label_map = sources.index_label_map(num_classes)
    missing = [i for i in sources.example_ids(source)
               if not os.path.isfile(pseudo_label_path(directory, i))]
    if missing:
      raise sources.DataError([
          f'{directory}: no pseudo-label PNG for {len(missing)} image(s) of the weak set, '
          f'e.g. {pseudo_label_path(directory, missing[0])}; write them with '
          '--mode=pseudo_labels (data.pseudo_labels)'])

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    example = self.source[index]
    path = pseudo_label_path(self.directory, example['id'])
    mask = sources.read_mask(path, path, self.label_map)
    sources.check_same_size(example['image'], mask, path)
    return {**example, 'mask': mask}

  def __repr__(self) -> str:
    return f'WithPseudoLabels({self.source!r}, {self.directory})'
