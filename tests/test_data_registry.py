"""Datasets as plug-ins: one `Dataset` and one registry line; each data config holds the
common fields and its own dataset's section, nothing else."""

import numpy as np
import pytest

from cct_jax import data
from cct_jax.data import dataset, factory, pipeline, sources


def test_each_config_holds_only_its_own_section():
  sections = {name: set(data.default_data_config(name)) - set(factory.COMMON_DEFAULTS)
              for name in data.DATASETS}
  assert sections == {'voc': {'voc'}, 'cityscapes': {'cityscapes'}, 'camvid': set(),
                      'sun': set(), 'folder': set(),
                      'tex5': {'generated'}, 'fashion5': {'generated'},
                      'fashion11': {'generated'}}
  assert 'idx_dir' in data.default_data_config('fashion5').generated
  assert 'idx_dir' not in data.default_data_config('tex5').generated
  assert [data.default_data_config(n).num_classes for n in ('voc', 'tex5', 'fashion11')] == [
      21, 5, 11]


def test_a_field_in_the_wrong_place_or_of_another_dataset_is_an_error():
  cfg = data.default_data_config('fashion5')
  cfg.idx_dir = '/data/fashion'  # Belongs in data.generated.
  with pytest.raises(ValueError, match=r"data.idx_dir is not a field of fashion5; it is "
                                       r"data.generated.idx_dir \(fashion11\), "
                                       r"data.generated.idx_dir \(fashion5\)"):
    data.make_source(cfg, 'val')

  cfg = data.default_data_config('tex5')
  cfg.generated.idx_dir = '/data/fashion'  # A field of fashion5's section, not tex5's.
  with pytest.raises(ValueError, match='data.generated.idx_dir is not a field of tex5'):
    data.eval_splits(cfg)

  cfg = data.default_data_config('voc')
  cfg.voc.split_dri = '/data/splits'
  with pytest.raises(ValueError, match='data.voc.split_dri is not a field of voc'):
    data.check_data_config(cfg)


def test_changing_the_name_alone_says_how_to_make_the_config():
  cfg = data.default_data_config('voc')
  cfg.name = 'tex5'
  with pytest.raises(ValueError, match=r"(?s)data.voc is not a field of tex5.*"
                                       r"data.generated is missing.*"
                                       r"default_data_config\('tex5'\)"):
    data.class_names(cfg)
  cfg.name = 'cityscapes_tfds'
  with pytest.raises(ValueError, match="unknown dataset data.name='cityscapes_tfds'"):
    data.check_data_config(cfg)


class _Stripes:
  """A toy source: vertical stripes of the classes."""

  def __init__(self, count: int, width: int):
    self.count, self.width = count, width

  def __len__(self):
    return self.count

  def __getitem__(self, index):
    mask = np.tile(np.arange(self.width, dtype=np.int32) % 3, (16, 1))
    image = np.repeat((mask * 80 + index)[..., None], 3, -1).astype(np.uint8)
    return {'image': image, 'mask': mask, 'id': f'stripes-{index}'}


def _stripes_source(cfg, split, *, check_files=True, keep_masks=False):
  del check_files
  if split == 'eval':
    return _Stripes(cfg.stripes.num_eval, cfg.stripes.width)
  train = _Stripes(8, cfg.stripes.width)
  labelled, unlabelled = sources.seeded_split(len(train), cfg.num_labelled, cfg.split_seed)
  if split == 'train_labelled':
    return sources.Subset(train, labelled)
  return sources.Subset(train, unlabelled, drop_masks=not keep_masks)


def test_a_new_dataset_is_one_declaration_and_one_registry_line(monkeypatch):
  stripes = dataset.Dataset(
      make_source=_stripes_source,
      split_rule=lambda cfg: dataset.seeded_rule(cfg, 'the 8 striped images'),
      class_names=('a', 'b', 'c'), eval_splits=('eval',),
      defaults=dict(num_labelled=2, crop_size=16, base_size=0, batch_size_labelled=2,
                    batch_size_unlabelled=2),
      section='stripes', section_defaults=dict(width=24, num_eval=3))
  monkeypatch.setitem(factory.DATASETS, 'stripes', stripes)

  cfg = data.default_data_config('stripes')
  assert cfg.num_classes == 3 and cfg.stripes.width == 24
  assert data.eval_splits(cfg) == ('eval',)
  assert data.split_rule(cfg) == ('2 labelled drawn by data.split_seed=0 from the 8 '
                                  'striped images; the rest unlabelled')
  labelled, unlabelled = next(pipeline.make_train_streams(cfg))
  assert labelled['mask'].shape == (2, 16, 16) and set(unlabelled) == {'image'}
  assert len(list(pipeline.make_eval_dataset(cfg, 'eval'))) == 3
