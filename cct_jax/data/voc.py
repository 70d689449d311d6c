"""PASCAL VOC 2012 with the SBD masks (SegmentationClassAug), 21 classes.

Expected layout (`root` is `VOCdevkit/VOC2012`, or a folder that contains it):

  VOC2012/JPEGImages/<id>.jpg
  VOC2012/SegmentationClass/<id>.png      palette PNGs, 255 on object borders
  VOC2012/SegmentationClassAug/<id>.png   SBD masks (index PNGs) for the 10,582 trainaug ids
  VOC2012/ImageSets/Segmentation/{train,val,train_aug}.txt   one id per line
  VOC2012/Annotations/<id>.xml            the objects in each image: its image-level
                                          labels (`data.image_labels='annotations'`, the
                                          default; see `annotated_labels`)

Which images are labelled (the rule is `split_rule`), first that applies:
  * the authors' split files in `data.voc.split_dir` (github.com/yassouali/CCT,
    dataloaders/voc_splits): `{n}_train_supervised.txt`, `{n}_train_unsupervised.txt`
    and `val.txt`, one `/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png` per line
    (paths relative to VOC2012);
  * n = the number of ids in ImageSets/Segmentation/train.txt (1464): exactly those, the
    rest of `data.voc.train_list` unlabelled. The paper's 1464 labelled images are VOC's
    finely annotated training set, augmented with SBD's images whose labels are not used
    (paper sec. 4.2);
  * any other n: a seeded draw from `train_list` (see `sources.seeded_split`: nested as n
    grows, labelled and unlabelled disjoint). `write_split_files` records such a split
    in the authors' format, so a run can be repeated from files.
`val` is ImageSets/Segmentation/val.txt, or the split dir's val.txt.
"""

import os
from collections.abc import Iterable
from xml.etree import ElementTree

import numpy as np

from cct_jax.data import dataset, sources, weak

NUM_CLASSES = 21
CLASS_NAMES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
    'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
    'sheep', 'sofa', 'train', 'tvmonitor')
ANNOTATION_DIR = 'Annotations'
FINE_TRAIN_LIST = 'ImageSets/Segmentation/train.txt'
DEFAULT_TRAIN_LIST = 'ImageSets/Segmentation/train_aug.txt'


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


def training_split(root: str, *, num_labelled: int, split_seed: int,
                   train_list: str) -> tuple[list[str], list[str], str]:
  """The ids of the labelled and of the unlabelled training images without split files,
  and the rule that chose them (one line)."""
  ids = read_lines(os.path.join(root, train_list))
  fine_path = os.path.join(root, FINE_TRAIN_LIST)
  fine = read_lines(fine_path) if os.path.isfile(fine_path) else []
  if fine and num_labelled == len(fine):
    labelled = set(fine)
    rest = [i for i in ids if i not in labelled]
    return fine, rest, (f'{FINE_TRAIN_LIST} labelled ({len(fine)} images, as the paper), the '
                        f'other {len(rest)} of {train_list} unlabelled')
  labelled, unlabelled = sources.seeded_split(len(ids), num_labelled, split_seed)
  return ([ids[i] for i in labelled], [ids[i] for i in unlabelled],
          f'{len(labelled)} labelled drawn by data.split_seed={split_seed} from the '
          f'{len(ids)} of {train_list}, the other {len(unlabelled)} unlabelled')


def split_items(root: str, split: str, *, num_labelled: int, split_seed: int,
                split_dir: str = '', train_list: str = DEFAULT_TRAIN_LIST,
                mask_dir: str = 'SegmentationClassAug',
                keep_masks: bool = False) -> list[sources.Item]:
  """The items of 'train_labelled', 'train_unlabelled' (with their SBD masks only if
  `keep_masks`) or 'val'."""
  root = find_root(root)
  check_root(root)
  if split_dir:
    return read_split_file(root, os.path.join(split_dir, _split_file(split, num_labelled)),
                           labelled=split != 'train_unlabelled' or keep_masks)
  if split == 'val':
    val_ids = read_lines(os.path.join(root, 'ImageSets', 'Segmentation', 'val.txt'))
    return id_items(root, val_ids, mask_dir)
  labelled, unlabelled, _ = training_split(root, num_labelled=num_labelled,
                                           split_seed=split_seed, train_list=train_list)
  if split == 'train_labelled':
    return id_items(root, labelled, mask_dir)
  unlabelled_items = id_items(root, unlabelled, mask_dir)
  return unlabelled_items if keep_masks else sources.without_masks(unlabelled_items)


def _split_file(split: str, num_labelled: int) -> str:
  return {'train_labelled': f'{num_labelled}_train_supervised.txt',
          'train_unlabelled': f'{num_labelled}_train_unsupervised.txt',
          'val': 'val.txt'}[split]


def split_rule(cfg) -> str:
  """Which rule chose the labelled images of data config `cfg`, in one line."""
  if cfg.voc.split_dir:
    return ("the authors' split files " + ' and '.join(
        os.path.join(cfg.voc.split_dir, _split_file(s, cfg.num_labelled))
        for s in dataset.TRAIN_SPLITS))
  root = find_root(dataset.require_root(cfg))
  check_root(root)
  return training_split(root, num_labelled=cfg.num_labelled, split_seed=cfg.split_seed,
                        train_list=cfg.voc.train_list)[2]


def make_source(cfg, split: str, *, check_files: bool = True,
                keep_masks: bool = False) -> sources.FileSource:
  items = split_items(dataset.require_root(cfg), split, num_labelled=cfg.num_labelled,
                      split_seed=cfg.split_seed, split_dir=cfg.voc.split_dir,
                      train_list=cfg.voc.train_list, mask_dir=cfg.voc.mask_dir,
                      keep_masks=keep_masks)
  return sources.FileSource(items, sources.index_label_map(NUM_CLASSES), check_files)


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


def read_annotation(path: str) -> np.ndarray:
  """bool (NUM_CLASSES,): the classes of the objects in the VOC XML annotation `path`.

  Every object counts, difficult and truncated ones too, as in IRN's cls_labels.npy (the
  authors' weak labels; github.com/jiwoon-ahn/irn voc12/dataloader.py). The parts of a
  person (head, hand, foot) are not objects; an object of no VOC class is an error.
  """
  if not os.path.isfile(path):
    raise sources.DataError([f'{path}: VOC annotation does not exist '
                             f'(data.image_labels={weak.ANNOTATIONS!r})'])
  try:
    names = [(o.findtext('name') or '').strip()
             for o in ElementTree.parse(path).getroot().iter('object')]
  except (OSError, ElementTree.ParseError) as e:
    raise sources.DataError([f'{path}: not a VOC XML annotation ({e})']) from e
  unknown = sorted(set(names) - set(CLASS_NAMES[1:]))
  if unknown:
    raise sources.DataError([f'{path}: objects {unknown} are not VOC classes'])
  return np.isin(CLASS_NAMES, names)


def annotated_labels(cfg, ids: Iterable[str]) -> dict[str, np.ndarray]:
  """{id: bool (NUM_CLASSES,)} from each image's Annotations/<id>.xml (`read_annotation`);
  the problems of every file are raised together."""
  directory = os.path.join(find_root(dataset.require_root(cfg)), ANNOTATION_DIR)
  labels, problems = {}, []
  for image_id in ids:
    try:
      labels[image_id] = read_annotation(os.path.join(directory, f'{image_id}.xml'))
    except sources.DataError as e:
      problems += e.problems
  sources.raise_if_problems(problems)
  return labels


DATASET = dataset.Dataset(
    make_source=make_source, split_rule=split_rule, class_names=CLASS_NAMES,
    eval_splits=('val',), annotated_labels=annotated_labels,
    defaults=dict(image_labels=weak.ANNOTATIONS), section='voc',
    section_defaults=dict(split_dir='', train_list=DEFAULT_TRAIN_LIST,
                          mask_dir='SegmentationClassAug'))
