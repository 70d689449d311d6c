"""PASCAL VOC 2012 with the SBD masks (SegmentationClassAug), 21 classes.

Expected layout (`root` is `VOCdevkit/VOC2012`, or a folder that contains it):

  VOC2012/JPEGImages/<id>.jpg
  VOC2012/SegmentationClass/<id>.png      palette PNGs, 255 on object borders
  VOC2012/SegmentationClassAug/<id>.png   SBD masks (index PNGs) for the 10,582 trainaug ids
  VOC2012/ImageSets/Segmentation/{train,val,train_aug}.txt   one id per line

Which images are labelled comes from one of two places:
  * the authors' split files in `split_dir`: `{n}_train_supervised.txt`,
    `{n}_train_unsupervised.txt` and `val.txt`, one
    `/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png` per line (paths relative to
    VOC2012);
  * without `split_dir`, a seeded split of the id list `train_list` (see
    `sources.seeded_split`: nested as n grows, labelled and unlabelled disjoint), with
    `val` from `ImageSets/Segmentation/val.txt`. `write_split_files` records such a split
    in the authors' format, so a run can be repeated from files.
The paper's 1464-label setting labels exactly VOC's train.txt: use the authors' files.
"""

import os

from cct_jax.data import sources

NUM_CLASSES = 21
CLASS_NAMES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
    'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
    'sheep', 'sofa', 'train', 'tvmonitor')


def palette() -> list[int]:
  """The VOC colour map (bit-interleaved class index), as a flat 768-entry palette."""
  colours = []
  for label in range(256):
    r = g = b = 0
    for bit in range(8):
      r |= ((label >> 0) & 1) << (7 - bit)
      g |= ((label >> 1) & 1) << (7 - bit)
      b |= ((label >> 2) & 1) << (7 - bit)
      label >>= 3
    colours += [r, g, b]
  return colours


def find_root(root: str) -> str:
  """`root` itself, or `root/VOCdevkit/VOC2012` when that exists."""
  nested = os.path.join(root, 'VOCdevkit', 'VOC2012')
  return nested if os.path.isdir(nested) else root


def check_root(root: str) -> None:
  if not os.path.isdir(os.path.join(root, 'JPEGImages')):
    raise sources.DataError([
        f'{root}: not a VOC2012 folder (no JPEGImages/ in it or in VOCdevkit/VOC2012/)'])


def read_lines(path: str) -> list[str]:
  if not os.path.isfile(path):
    raise sources.DataError([f'{path}: split file does not exist'])
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def read_split_file(root: str, path: str, labelled: bool) -> list[sources.Item]:
  """Items of an authors' split file, '/JPEGImages/<id>.jpg /<mask dir>/<id>.png' lines."""
  items, problems = [], []
  for number, line in enumerate(read_lines(path), 1):
    fields = line.split()
    if len(fields) != 2:
      problems.append(f'{path}:{number}: expected "image mask", got {line!r}')
      continue
    image, mask = (f.lstrip('/') for f in fields)
    image_id = os.path.splitext(os.path.basename(image))[0]
    items.append(sources.Item(image_id, os.path.join(root, image),
                              os.path.join(root, mask) if labelled else None))
  sources.raise_if_problems(problems)
  return items


def id_items(root: str, ids: list[str], mask_dir: str) -> list[sources.Item]:
  return [sources.Item(i, os.path.join(root, 'JPEGImages', f'{i}.jpg'),
                       os.path.join(root, mask_dir, f'{i}.png')) for i in ids]


def split_items(root: str, split: str, *, num_labelled: int, split_seed: int,
                split_dir: str = '',
                train_list: str = 'ImageSets/Segmentation/train_aug.txt',
                mask_dir: str = 'SegmentationClassAug',
                keep_masks: bool = False) -> list[sources.Item]:
  """The items of 'train_labelled', 'train_unlabelled' (with their SBD masks only if
  `keep_masks`) or 'val'."""
  root = find_root(root)
  check_root(root)
  if split_dir:
    name = {'train_labelled': f'{num_labelled}_train_supervised.txt',
            'train_unlabelled': f'{num_labelled}_train_unsupervised.txt',
            'val': 'val.txt'}[split]
    return read_split_file(root, os.path.join(split_dir, name),
                           labelled=split != 'train_unlabelled' or keep_masks)
  if split == 'val':
    val_ids = read_lines(os.path.join(root, 'ImageSets', 'Segmentation', 'val.txt'))
    return id_items(root, val_ids, mask_dir)
  ids = read_lines(os.path.join(root, train_list))
  labelled, unlabelled = sources.seeded_split(len(ids), num_labelled, split_seed)
  if split == 'train_labelled':
    return id_items(root, [ids[i] for i in labelled], mask_dir)
  unlabelled_items = id_items(root, [ids[i] for i in unlabelled], mask_dir)
  return unlabelled_items if keep_masks else sources.without_masks(unlabelled_items)


def write_split_files(split_dir: str, labelled: list[sources.Item],
                      unlabelled: list[sources.Item], val: list[sources.Item]) -> None:
  """Writes `{n}_train_supervised.txt`, `{n}_train_unsupervised.txt` and `val.txt`.

  Unlabelled lines name the SBD mask as the authors' files do (it is never read).
  """
  os.makedirs(split_dir, exist_ok=True)
  files = {f'{len(labelled)}_train_supervised.txt': labelled,
           f'{len(labelled)}_train_unsupervised.txt': unlabelled, 'val.txt': val}
  for name, items in files.items():
    with open(os.path.join(split_dir, name), 'w') as f:
      f.writelines(f'/JPEGImages/{i.id}.jpg /SegmentationClassAug/{i.id}.png\n'
                   for i in items)
