"""The bundled real-data scenes (README "Data"): tex5 and fashion5 from tiny IDX files."""

import numpy as np
import pytest

import fakes
from cct_jax import data
from cct_jax.data import fashion5, tex5


def _examples_equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_tex5_is_deterministic_and_well_formed():
  source = tex5.Tex5('train', 10, seed=0)
  example = source[3]
  assert example['image'].shape == (64, 64, 3) and example['image'].dtype == np.uint8
  assert example['mask'].shape == (64, 64) and example['mask'].dtype == np.int32
  assert set(np.unique(example['mask'])) <= set(range(5))
  assert _examples_equal(example, tex5.Tex5('train', 10, seed=0)[3])  # Any process.
  assert not _examples_equal(example, tex5.Tex5('train', 10, seed=1)[3])
  assert not np.array_equal(example['image'], tex5.Tex5('val', 10, seed=0)[3]['image'])
  with pytest.raises(IndexError):
    source[10]


def test_tex5_regions_are_disjoint():
  cells = {split: {(r, c) for r in range(256)[rows] for c in range(256)[cols]}
           for split, (rows, cols) in tex5.REGIONS.items()}
  assert not cells['train'] & cells['val'] and not cells['train'] & cells['test']
  assert not cells['val'] & cells['test']
  assert tex5.textures().shape == (5, 256, 256)


@pytest.fixture(scope='module', params=[True, False], ids=['gz', 'plain'])
def idx_dir(request, tmp_path_factory):
  path = tmp_path_factory.mktemp('idx')
  fakes.write_fashion_idx(str(path), num_train=60, num_test=20, gz=request.param)
  return str(path)


def test_fashion5_scenes(idx_dir):
  source = fashion5.Fashion5('val', 6, seed=0, idx_dir=idx_dir)
  example = source[2]
  assert example['image'].shape == (64, 64, 3) and example['image'].dtype == np.uint8
  assert set(np.unique(example['mask'])) <= set(range(5))
  assert (example['mask'] == 0).mean() > 0.3 and (example['mask'] > 0).any()
  assert _examples_equal(example, fashion5.Fashion5('val', 6, seed=0, idx_dir=idx_dir)[2])
  fine = fashion5.Fashion5('test', 20, idx_dir=idx_dir, class_map=fashion5.FINE_CLASS_MAP)
  assert set(np.unique(np.concatenate([fine[i]['mask'] for i in range(20)]))) <= set(
      range(11))


def test_fashion5_item_pools_are_disjoint(idx_dir):
  pools = {split: fashion5.item_pool(idx_dir, split, seed=0)[0]
           for split in ('train', 'val', 'test')}
  assert [len(p) for p in pools.values()] == [50, 10, 20]  # 5/6 and 1/6 of train; t10k.
  keys = {s: {image.tobytes() for image in pool} for s, pool in pools.items()}
  assert not keys['train'] & keys['val']
  images, _ = fashion5.load_items(idx_dir, 'train')
  assert keys['train'] | keys['val'] == {image.tobytes() for image in images}


def test_protocol_splits(idx_dir):
  cfg = data.default_data_config('fashion5')
  cfg.num_labelled = 3
  cfg.generated.update(dict(idx_dir=idx_dir, sizes=dict(train=30, val=4, test=4),
                            labelled_pool=10))
  labelled = data.make_source(cfg, 'train_labelled')
  unlabelled = data.make_source(cfg, 'train_unlabelled')
  assert len(labelled) == 3 and set(labelled.indices) < set(range(10))
  np.testing.assert_array_equal(unlabelled.indices, np.arange(10, 30))
  assert 'mask' not in unlabelled[0] and 'mask' in labelled[0]
  cfg.num_labelled = 6
  assert set(labelled.indices) < set(data.make_source(cfg, 'train_labelled').indices)
  cfg.split_seed = 1
  assert set(data.make_source(cfg, 'train_labelled').indices) != set(labelled.indices)
  assert data.split_rule(cfg) == ('6 labelled drawn by data.split_seed=1 from the first 10 '
                                  'training scenes (the labelled pool); the rest unlabelled')


def test_missing_or_broken_idx_files(tmp_path):
  with pytest.raises(data.DataError, match='apt-get install dataset-fashion-mnist.*'
                                           'data.generated.idx_dir'):
    fashion5.Fashion5('train', 4, idx_dir=str(tmp_path / 'none'))
  fakes.write_fashion_idx(str(tmp_path), gz=False)
  path = tmp_path / 'train-images-idx3-ubyte'
  path.write_bytes(path.read_bytes()[:-5])
  with pytest.raises(data.DataError, match='train-images-idx3-ubyte: truncated IDX file'):
    fashion5.read_idx(str(path))
