"""Scenes generated from real pixels that ship in packages (the bundled datasets tex5 and
fashion5, README's Data section): what they share.

Scene i of a split is a pure function of (seed, split, i): it is drawn from
`np.random.default_rng([seed, split code, i])`, so a source is random-access, identical in
every process and worker, and nothing generated is stored. The protocol: a training split
of `sizes.train` scenes whose labelled examples are drawn (by the run's split seed) from the
first `labelled_pool`; the scenes after the pool form the unlabelled set.

Their config section, `data.generated`: `scene_seed` (which scenes), `sizes` (scenes per
split), `labelled_pool` and `image_size` (the side of the square scenes).
"""

import abc
import functools
from collections.abc import Callable

import numpy as np

from cct_jax import errors
from cct_jax.data import dataset, sources

SPLIT_CODES = {'train': 0, 'val': 1, 'test': 2}


class GeneratedSource(abc.ABC):
  """`num_scenes` scenes of one split; subclasses define `generate(rng) -> image, mask`."""

  def __init__(self, split: str, num_scenes: int, seed: int):
    self.split, self.num_scenes, self.seed = split, num_scenes, seed

  @abc.abstractmethod
  def generate(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One scene's uint8 RGB image and int32 mask, drawn from `rng` alone."""

  def __len__(self) -> int:
    return self.num_scenes

  def example_id(self, index: int) -> str:
    return f'{self.split}-{index:05d}'

  def ids(self) -> list[str]:
    return [self.example_id(index) for index in range(self.num_scenes)]

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self.num_scenes:
      raise IndexError(f'scene {index} of a {self.num_scenes}-scene split')
    rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])
    image, mask = self.generate(rng)
    return {'image': image, 'mask': mask, 'id': self.example_id(index)}

  def __repr__(self) -> str:
    return (f'{type(self).__name__}({self.split!r}, num_scenes={self.num_scenes}, '
            f'seed={self.seed})')


def protocol_subset(train: GeneratedSource, split: str, *, num_labelled: int,
                    labelled_pool: int, split_seed: int,
                    keep_masks: bool = False) -> sources.Subset:
  """'train_labelled' or 'train_unlabelled' of the protocol, as a subset of `train`; the
  unlabelled scenes keep their masks only with `keep_masks`."""
  if not labelled_pool < len(train):
    raise errors.UserError(f'labelled_pool={labelled_pool} leaves no unlabelled scenes in a '
                           f'{len(train)}-scene training split')
  if split == 'train_labelled':
    labelled, _ = sources.seeded_split(labelled_pool, num_labelled, split_seed)
    return sources.Subset(train, labelled)
  return sources.Subset(train, np.arange(labelled_pool, len(train)),
                        drop_masks=not keep_masks)


def make_source(scenes: Callable[..., GeneratedSource], cfg, split: str, *,
                check_files: bool = True, keep_masks: bool = False):
  """The source of `split`; `scenes(split_name, section)` gives the dataset's scenes of
  its split 'train', 'val' or 'test' as `data.generated` (`section`) sets them."""
  del check_files  # Nothing is read from files.
  source = scenes(dataset.stored_split(split), cfg.generated)
  if split not in dataset.TRAIN_SPLITS:
    return source
  return protocol_subset(source, split, num_labelled=cfg.num_labelled,
                         labelled_pool=cfg.generated.labelled_pool,
                         split_seed=cfg.split_seed, keep_masks=keep_masks)


def split_rule(cfg) -> str:
  return dataset.seeded_rule(
      cfg, f'the first {cfg.generated.labelled_pool} training scenes (the labelled pool)')


def generated_dataset(scenes: Callable[..., GeneratedSource], class_names,
                      **section_fields) -> dataset.Dataset:
  """A dataset of generated scenes: 64x64 by default, cropped to 64 without rescaling (so
  only flips), 25 labels, the labelled set re-augmented on every pass (the demos' measured
  accuracies were made so); `section_fields` add to `data.generated`."""
  return dataset.Dataset(
      make_source=functools.partial(make_source, scenes),
      split_rule=split_rule, class_names=class_names, eval_splits=('val', 'test'),
      defaults=dict(crop_size=64, base_size=0, num_labelled=25, labelled_replay=False),
      section='generated',
      section_defaults=dict(scene_seed=0, sizes=dict(train=4500, val=200, test=500),
                            labelled_pool=500, image_size=64, **section_fields))


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
  """[0, 1] floats, (H, W) or (H, W, 3), to uint8 RGB."""
  image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
  return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image
