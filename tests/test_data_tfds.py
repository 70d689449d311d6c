"""TFDS without TensorFlow: the array_record exporter and the Cityscapes data source."""

import importlib.util
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

import fakes
from cct_jax import data
from cct_jax.data import pipeline

_TOOL = pathlib.Path(__file__).parents[1] / 'tools' / 'export_tfds.py'
_spec = importlib.util.spec_from_file_location('export_tfds', _TOOL)
export_tfds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_tfds)


def _tiny_tex5():
  cfg = data.default_data_config('tex5')
  cfg.generated.update(dict(sizes=dict(train=10, val=3, test=2), labelled_pool=5))
  cfg.num_labelled = 2
  return cfg


def test_export_round_trip(tmp_path):
  cfg = _tiny_tex5()
  export_tfds.export(cfg, 'tiny_tex5', str(tmp_path))
  exported = _tiny_tex5()  # The same dataset, read from its export.
  exported.update(dict(export_name='tiny_tex5', export_dir=str(tmp_path)))
  assert data.eval_splits(exported) == ('val', 'test')
  assert data.split_rule(exported) == ("the labelled set stored in the export 'tiny_tex5' "
                                       '(tools/export_tfds.py)')
  for split in data.TRAIN_SPLITS + ('val', 'test'):
    original, read_back = data.make_source(cfg, split), data.make_source(exported, split)
    assert len(original) == len(read_back)
    for index in range(len(original)):
      a, b = original[index], read_back[index]
      assert a.keys() == b.keys()
      assert all(np.array_equal(a[k], b[k]) for k in a if k != 'id') and a['id'] == b['id']
  exported.num_labelled = 3
  with pytest.raises(ValueError, match="data.num_labelled=3 but the export 'tiny_tex5' "
                                       'holds 2 labelled images'):
    data.make_source(exported, 'train_labelled')
  with pytest.raises(FileExistsError, match='already holds a prepared dataset'):
    export_tfds.export(cfg, 'tiny_tex5', str(tmp_path))


def _cityscapes_examples(count, rng):
  for i in range(count):
    image, label_ids = fakes.scene(rng, 16, 32, values=range(34))
    yield f'{i}', {'image_id': f'aachen_{i:06d}', 'image_left': export_tfds.png(image),
                   'segmentation_label': export_tfds.png(label_ids)}


def test_cityscapes_from_a_prepared_tfds_dataset(tmp_path):
  features = {
      'image_id': tfds.features.Text(),
      'image_left': tfds.features.Image(shape=(None, None, 3), encoding_format='png'),
      'segmentation_label': tfds.features.Image(shape=(None, None, 1),
                                                encoding_format='png'),
  }
  rng = np.random.default_rng(0)
  export_tfds.write_tfds(
      'cityscapes', {'train': _cityscapes_examples(5, rng),
                     'validation': _cityscapes_examples(2, rng)},
      data_dir=str(tmp_path), features=features, config='semantic_segmentation')
  cfg = data.default_data_config('cityscapes')
  cfg.update(dict(num_labelled=2, resize_to=(8, 16)))
  cfg.cityscapes.tfds_dir = str(tmp_path)  # data.root is not read.
  val = data.make_source(cfg, 'val')
  assert len(val) == 2 and val[1]['id'] == 'aachen_000001'
  mask = val[0]['mask']
  assert mask.max() <= 255 and set(np.unique(mask)) - {255} <= set(range(19))
  assert len(data.make_source(cfg, 'train_labelled')) == 2
  assert len(data.make_source(cfg, 'train_unlabelled')) == 3
  labelled, unlabelled = next(pipeline.make_train_streams(cfg))
  assert labelled['mask'].shape == (10, 8, 16)
  assert unlabelled['image'].shape == (10, 8, 16, 3)


def test_unprepared_tfds_dataset(tmp_path):
  cfg = data.default_data_config('cityscapes')
  cfg.cityscapes.tfds_dir = str(tmp_path)
  with pytest.raises(data.DataError, match='(?s)is not prepared in array_record format.*'
                                           'tfds build cityscapes/semantic_segmentation'):
    data.make_source(cfg, 'val')
