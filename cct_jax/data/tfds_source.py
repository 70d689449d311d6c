"""Datasets prepared by tensorflow-datasets, read with `tfds.data_source` (no TensorFlow).

A TFDS dataset must already be prepared in the array_record format under `data_dir`
(the default TFDS data dir when empty): Cityscapes through its manual download, or any
dataset that `tools/export_tfds.py` wrote. Images and masks are kept as encoded bytes by
TFDS and decoded here, so they get the same conversion and checks as files on disk.

Any dataset may be read from its export by tools/export_tfds.py instead of its own files
(`data.export_name` in the TFDS data dir `data.export_dir`, see factory.py): the export
stores the splits under our split names, the labelled set as the exporting config chose
it, and masks of class ids 0..num_classes-1.
"""

import importlib

import numpy as np

from cct_jax.data import dataset, sources


def _tfds():
  """tensorflow_datasets, imported when a TFDS dataset is read: the config registry
  (factory.py) imports this module and must load where tfds is not installed."""
  return importlib.import_module('tensorflow_datasets')


def split_names(name: str, data_dir: str = '') -> tuple[str, ...]:
  """The splits stored for a prepared TFDS dataset."""
  try:
    builder = _tfds().builder(name, data_dir=data_dir or None)
  except Exception as e:  # tfds raises several types for a dataset it cannot find.
    raise _not_prepared(name, '', data_dir, e) from e
  return tuple(builder.info.splits.keys())


def _not_prepared(name: str, split: str, data_dir: str,
                  error: Exception) -> sources.DataError:
  return sources.DataError([
      f'{data_dir or "default TFDS data dir"}: TFDS dataset {name!r} {split} is not '
      f'prepared in array_record format ({error}). Prepare it with `tfds build {name} '
      '--file_format=array_record` (Cityscapes also needs --manual_dir with its zips), or '
      'write it with tools/export_tfds.py.'])


class TfdsSource:
  """One split of a prepared TFDS dataset; `keys` name its image, mask and id features.

  Pickles without the open reader (each grain worker reopens the array_record files).
  """

  def __init__(self, name: str, split: str, *, data_dir: str = '', label_map: np.ndarray,
               keys: tuple[str, str, str] = ('image', 'mask', 'id'),
               with_masks: bool = True):
    self.name, self.split, self.data_dir = name, split, data_dir
    self.label_map, self.keys, self.with_masks = label_map, keys, with_masks
    self._reader = self._open()

  def _open(self):
    image_key, mask_key, _ = self.keys
    try:
      tfds = _tfds()
      return tfds.data_source(
          self.name, split=self.split, data_dir=self.data_dir or None, download=False,
          decoders={image_key: tfds.decode.SkipDecoding(),
                    mask_key: tfds.decode.SkipDecoding()})
    except Exception as e:  # tfds raises several types for a dataset it cannot find.
      raise _not_prepared(self.name, f'split {self.split!r}', self.data_dir, e) from e

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != '_reader'}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._reader = self._open()

  def __len__(self) -> int:
    return len(self._reader)

  def __getitem__(self, index: int) -> dict:
    image_key, mask_key, id_key = self.keys
    record = self._reader[index]
    example_id = record[id_key].decode()
    name = f'{self.name}/{self.split}[{index}] ({example_id})'
    example = {'image': sources.read_image(record[image_key], name), 'id': example_id}
    if self.with_masks:
      example['mask'] = sources.read_mask(record[mask_key], name, self.label_map)
      sources.check_same_size(example['image'], example['mask'], name)
    return example

  def __repr__(self) -> str:
    return f'TfdsSource({self.name!r}, {self.split!r}, data_dir={self.data_dir!r})'


def exported_eval_splits(name: str, data_dir: str = '') -> tuple[str, ...]:
  """The evaluation splits a tools/export_tfds.py export holds, in the order it wrote them
  (the last one is reported)."""
  return tuple(s for s in split_names(name, data_dir) if s not in dataset.TRAIN_SPLITS)


def exported_source(name: str, data_dir: str, split: str, *, num_classes: int,
                    keep_masks: bool = False) -> TfdsSource:
  """`split` of a tools/export_tfds.py export: stored under our split names, masks of
  class ids."""
  return TfdsSource(name, split, data_dir=data_dir,
                    label_map=sources.index_label_map(num_classes),
                    with_masks=split != 'train_unlabelled' or keep_masks)
