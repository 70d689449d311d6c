"""`check_dataset`: read every example of every split once, before any training.

It reports the rule that chose the labelled images, split sizes and per-class pixel
frequencies, or raises one `DataError` that
lists every problem found (missing folders, split files and listed files, unreadable or
truncated images, masks of the wrong size, colour masks, labels outside the classes), so
a broken dataset is fixed in one pass rather than one crash at a time.
"""

import dataclasses

import numpy as np

from cct_jax.data import factory, sources


@dataclasses.dataclass
class SplitReport:
  """One split: its size and, if labelled, pixel counts per class and ignored."""
  split: str
  num_examples: int
  class_pixels: np.ndarray | None  # (num_classes,), None for unlabelled splits.
  ignored_pixels: int = 0


def _percent(part, whole) -> float:
  return 100.0 * part / max(whole, 1)


@dataclasses.dataclass
class DatasetReport:
  """What `check_dataset` found; `str()` is the printed table."""
  name: str
  class_names: tuple[str, ...]
  splits: list[SplitReport]
  split_rule: str  # which rule chose the labelled images (factory.split_rule)

  def __str__(self) -> str:
    lines = [f'dataset {self.name}: {len(self.class_names)} classes',
             f'  labelled split: {self.split_rule}']
    lines += [f'  {s.split:<18} {s.num_examples:>7} examples' for s in self.splits]
    labelled = [s for s in self.splits if s.class_pixels is not None]
    lines.append('  pixel frequency per class, % of the labelled pixels of each split')
    lines.append(f'  {"":<18}' + ''.join(f'{s.split:>18}' for s in labelled))
    for c, name in enumerate(self.class_names):
      row = ''.join(f'{_percent(s.class_pixels[c], s.class_pixels.sum()):>18.2f}'
                    for s in labelled)
      lines.append(f'  {c:>3} {name[:14]:<14}{row}')
    row = ''.join(
        f'{_percent(s.ignored_pixels, s.ignored_pixels + s.class_pixels.sum()):>18.2f}'
        for s in labelled)
    lines.append(f'  {"ignored (% all)":<18}{row}')
    return '\n'.join(lines)


def _check_split(source, num_classes: int, problems: list[str], split: str) -> SplitReport:
  """Reads every example of `source`, adding its problems to `problems`."""
  counts = np.zeros(num_classes + 1, np.int64)  # The last bin counts ignored pixels.
  labelled = False
  for index in range(len(source)):
    try:
      example = source[index]
    except sources.DataError as e:
      problems.extend(f'[{split}] {p}' for p in e.problems)
      continue
    if 'mask' in example:
      labelled = True
      ids = np.where(example['mask'] == sources.IGNORE_INDEX, num_classes, example['mask'])
      counts += np.bincount(ids.ravel(), minlength=num_classes + 1)
  return SplitReport(split, len(source), counts[:-1] if labelled else None,
                     int(counts[-1]))


def check_dataset(cfg, print_fn=print) -> DatasetReport:
  """Checks every split of the dataset of data config `cfg`; prints and returns a report.

  Raises `DataError` listing every problem of every split; an image smaller than the crop
  is no problem (it is padded), nor is a greyscale or RGBA image (converted to RGB).
  """
  problems, reports = [], []
  for split in factory.TRAIN_SPLITS + factory.eval_splits(cfg):
    try:
      source = factory.make_source(cfg, split, check_files=False)
    except sources.DataError as e:
      problems.extend(f'[{split}] {p}' for p in e.problems)
      continue
    reports.append(_check_split(source, cfg.num_classes, problems, split))
  sources.raise_if_problems(problems)
  report = DatasetReport(cfg.name, factory.class_names(cfg), reports,
                         factory.split_rule(cfg))
  print_fn(str(report))
  return report
