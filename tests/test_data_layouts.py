"""Folder layouts (VOC, Cityscapes, CamVid, SUN RGB-D, custom) through the pipelines."""

import os

import numpy as np
import pytest
from PIL import Image

import fakes
from cct_jax import data
from cct_jax.data import camvid, cityscapes, factory, pipeline, sources, sunrgbd, voc


def _config(name, root, **overrides):
  cfg = data.default_data_config(name)
  cfg.update(dict(root=str(root), num_labelled=2, batch_size_labelled=2,
                  batch_size_unlabelled=2, crop_size=32, base_size=40))
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope='module')
def roots(tmp_path_factory):
  base = tmp_path_factory.mktemp('layouts')
  fakes.write_voc_folder(str(base / 'voc'), num_train=5, num_sbd=3, num_val=3)
  fakes.write_cityscapes_folder(str(base / 'cityscapes'))
  fakes.write_camvid_folder(str(base / 'camvid'))
  fakes.write_sun_folder(str(base / 'sun'))
  fakes.write_custom_folder(str(base / 'folder'))
  return base


LAYOUTS = {  # name: config overrides (small fixed sizes for the no-augmentation datasets)
    'voc': {},
    'cityscapes': dict(resize_to=(16, 32)),
    'camvid': dict(resize_to=(18, 24)),
    'sun': dict(resize_to=(24, 32)),
    'folder': dict(num_classes=3),
}


@pytest.mark.parametrize('name', LAYOUTS)
def test_layout_through_train_and_eval_pipelines(roots, name):
  cfg = _config(name, roots / name, **LAYOUTS[name])
  labelled, unlabelled = next(pipeline.make_train_streams(cfg))
  height, width = tuple(cfg.resize_to) if not cfg.augment else (32, 32)
  assert labelled['image'].shape == (2, height, width, 3)
  assert labelled['image'].dtype == np.float32
  assert labelled['mask'].shape == (2, height, width)
  assert set(unlabelled) == {'image'}
  for split in data.eval_splits(cfg):
    batches = list(pipeline.make_eval_dataset(cfg, split))
    assert len(batches) == len(data.make_source(cfg, split))
    for batch in batches:
      mask = batch['mask']
      assert batch['valid'].all()
      assert np.all((mask == data.IGNORE_INDEX) | ((mask >= 0) & (mask < cfg.num_classes)))


def test_voc_palette_masks_keep_their_indices_and_borders(roots):
  source = data.make_source(_config('voc', roots / 'voc'), 'val')
  example = source[0]
  stored = np.asarray(Image.open(roots / 'voc/VOCdevkit/VOC2012/SegmentationClassAug'
                                 / f'{example["id"]}.png'))
  np.testing.assert_array_equal(example['mask'], stored)
  assert (example['mask'] == data.IGNORE_INDEX).any() and (example['mask'] == 0).any()
  assert example['image'].dtype == np.uint8
  assert example['image'].shape == (*stored.shape, 3)
  assert len({source[i]['image'].shape for i in range(len(source))}) == len(source)


def test_voc_seeded_splits_are_nested_disjoint_and_repeatable(roots, tmp_path):
  def ids(n, split, seed=0):
    cfg = _config('voc', roots / 'voc', num_labelled=n, split_seed=seed)
    return [e.id for e in data.make_source(cfg, split).items]

  everything = set(ids(3, 'train_labelled') + ids(3, 'train_unlabelled'))
  assert len(everything) == 8  # train.txt's 5 and SBD's 3: all of train_aug.txt.
  for n in (1, 3, 6):
    assert not set(ids(n, 'train_labelled')) & set(ids(n, 'train_unlabelled'))
    assert set(ids(n, 'train_labelled')) <= set(ids(n + 1, 'train_labelled'))
  assert ids(3, 'train_labelled') != ids(3, 'train_labelled', seed=1)

  # Written in the authors' format, the split reads back the same.
  cfg = _config('voc', roots / 'voc', num_labelled=3)
  splits = {s: data.make_source(cfg, s).items for s in ('train_labelled',
                                                        'train_unlabelled', 'val')}
  voc.write_split_files(str(tmp_path), *splits.values())
  with open(tmp_path / '3_train_supervised.txt') as f:
    line = f.readline().split()
  assert line[0].startswith('/JPEGImages/') and line[1].startswith('/SegmentationClassAug/')
  from_files = _config('voc', roots / 'voc', num_labelled=3)
  from_files.voc.split_dir = str(tmp_path)
  for split, items in splits.items():
    assert data.make_source(from_files, split).items == tuple(items)
  assert data.split_rule(from_files) == (
      f"the authors' split files {tmp_path}/3_train_supervised.txt and "
      f'{tmp_path}/3_train_unsupervised.txt')
  assert data.split_rule(cfg) == ('3 labelled drawn by data.split_seed=0 from the 8 of '
                                  'ImageSets/Segmentation/train_aug.txt, the other 5 '
                                  'unlabelled')


def _listed(roots, name):
  return voc.read_lines(str(roots / 'voc/VOCdevkit/VOC2012/ImageSets/Segmentation' / name))


def test_voc_labels_exactly_train_txt_when_the_count_is_its_length(roots):
  """The paper's 1464 are VOC's train.txt, the rest of train_aug unlabelled: a count
  equal to train.txt's length takes that split instead of a draw."""
  fine, train_aug = _listed(roots, 'train.txt'), _listed(roots, 'train_aug.txt')
  assert set(fine) < set(train_aug)  # The folder has SBD-only images, as VOC + SBD.
  cfg = _config('voc', roots / 'voc', num_labelled=len(fine))
  labelled = data.make_source(cfg, 'train_labelled')
  unlabelled = data.make_source(cfg, 'train_unlabelled')
  assert labelled.ids() == fine
  assert unlabelled.ids() == [i for i in train_aug if i not in fine]
  assert all(item.mask is None for item in unlabelled.items)
  assert data.split_rule(cfg) == (
      f'ImageSets/Segmentation/train.txt labelled ({len(fine)} images, as the paper), '
      f'the other {len(train_aug) - len(fine)} of ImageSets/Segmentation/train_aug.txt '
      'unlabelled')
  # Any other count is a seeded draw over all of train_aug, SBD-only images included.
  drawn = _config('voc', roots / 'voc', num_labelled=len(fine) - 1)
  assert set(data.make_source(drawn, 'train_labelled').ids()) - set(fine)
  assert 'drawn by data.split_seed' in data.split_rule(drawn)


def _write_annotation(path, objects):
  """A VOC XML annotation listing `objects`; a person carries a part, as VOC's do."""
  parts = {'person': '<part><name>head</name><bndbox /></part>'}
  listed = ''.join(f'<object><name>{name}</name><difficult>{k % 2}</difficult>'
                   f'{parts.get(name, "")}</object>' for k, name in enumerate(objects))
  with open(path, 'w') as f:
    f.write(f'<annotation><folder>VOC2012</folder>{listed}</annotation>')


def test_voc_image_labels_are_the_objects_of_its_xml_annotations(tmp_path):
  root = fakes.write_voc_folder(str(tmp_path), num_train=3, num_val=1)
  cfg = _config('voc', tmp_path, num_labelled=1)
  assert cfg.image_labels == 'annotations'  # VOC's default, as IRN's cls_labels.npy
  ids = data.make_source(cfg, 'train_unlabelled').ids()
  os.makedirs(os.path.join(root, 'Annotations'))
  path = lambda image_id: os.path.join(root, 'Annotations', f'{image_id}.xml')
  objects = {ids[0]: ['dog', 'person', 'dog'], ids[1]: ['tvmonitor']}
  for image_id, names in objects.items():
    _write_annotation(path(image_id), names)
  assert {i: np.flatnonzero(flags).tolist()
          for i, flags in factory.make_weak_source(cfg).labels.items()} == {
              ids[0]: [12, 15], ids[1]: [20]}  # dog, person; tvmonitor

  _write_annotation(path(ids[0]), ['dog', 'dragon'])
  with open(path(ids[1]), 'w') as f:
    f.write('<annotation><object><name>dog</name>')  # cut short
  with pytest.raises(sources.DataError) as error:  # Every file's problem, at once.
    factory.make_weak_source(cfg)
  unknown, corrupt = error.value.problems
  assert unknown == f"{path(ids[0])}: objects ['dragon'] are not VOC classes"
  assert corrupt.startswith(f'{path(ids[1])}: not a VOC XML annotation (no element found')
  os.remove(path(ids[1]))
  with pytest.raises(sources.DataError, match=f'{path(ids[1])}: VOC annotation does not exist'):
    factory.make_weak_source(cfg)

  tex5 = data.default_data_config('tex5')
  tex5.image_labels = 'annotations'
  with pytest.raises(ValueError, match="data.image_labels='annotations': tex5 has no "
                                       'annotations'):
    factory.make_weak_source(tex5)


def test_seeded_split_properties():
  for n in (1, 7, 20):
    labelled, unlabelled = data.seeded_split(20, n, seed=3)
    assert len(labelled) == n
    assert sorted(np.concatenate([labelled, unlabelled])) == list(range(20))
  assert set(data.seeded_split(20, 4, 3)[0]) <= set(data.seeded_split(20, 9, 3)[0])
  with pytest.raises(ValueError, match='num_labelled=21 must be in'):
    data.seeded_split(20, 21, 0)


def test_label_maps_of_cityscapes_camvid_and_sun(tmp_path):
  raw = np.array([[7, 26, 0, 33], [255, 24, 1, 8]], np.uint8)
  Image.fromarray(raw).save(tmp_path / 'cs.png')
  ids = sources.read_mask(str(tmp_path / 'cs.png'), 'cs', cityscapes.label_map())
  np.testing.assert_array_equal(ids, [[0, 13, 255, 18], [255, 11, 255, 1]])

  for name, raw_values, expected in (('camvid', [0, 10, 11], [0, 10, 255]),
                                     ('sun', [0, 1, 13], [255, 0, 12])):
    Image.fromarray(np.array([raw_values], np.uint8)).save(tmp_path / f'{name}.png')
    lut = {'camvid': camvid, 'sun': sunrgbd}[name].label_map()
    ids = sources.read_mask(str(tmp_path / f'{name}.png'), name, lut)
    np.testing.assert_array_equal(ids, [expected])


def test_folder_images_without_masks_are_unlabelled(roots):
  cfg = _config('folder', roots / 'folder', num_classes=3, num_labelled=-1)
  labelled = data.make_source(cfg, 'train_labelled')
  unlabelled = data.make_source(cfg, 'train_unlabelled')
  assert len(labelled) == 4 and all(i.mask for i in labelled.items)
  assert len(unlabelled) == 3 and not any(i.mask for i in unlabelled.items)
  assert 'mask' not in unlabelled[0]
  assert data.class_names(cfg) == ('background', 'thing', 'stuff')
  assert data.eval_splits(cfg) == ('val',)


def test_authors_unlabelled_lines_never_read_masks(roots, tmp_path):
  """Unlabelled lines name SBD masks that may not exist; they are not required."""
  with open(tmp_path / '1_train_supervised.txt', 'w') as f:
    f.write('/JPEGImages/2007_000000.jpg /SegmentationClassAug/2007_000000.png\n')
  with open(tmp_path / '1_train_unsupervised.txt', 'w') as f:
    f.write('/JPEGImages/2007_000001.jpg /SegmentationClassAug/missing.png\n')
  cfg = _config('voc', roots / 'voc', num_labelled=1)
  cfg.voc.split_dir = str(tmp_path)
  unlabelled = data.make_source(cfg, 'train_unlabelled')
  assert unlabelled[0]['id'] == '2007_000001' and 'mask' not in unlabelled[0]
  assert os.path.basename(data.make_source(cfg, 'train_labelled').items[0].mask) == (
      '2007_000000.png')


def test_test_folders_vary_where_the_real_data_varies(roots, tmp_path):
  """VOC's val images come in many sizes (evaluation must cope: another module's tests
  rely on this helper giving at least 20)."""
  fakes.write_voc_folder(str(tmp_path), num_train=2, num_val=20)
  val = data.make_source(_config('voc', tmp_path), 'val')
  assert len({val[i]['image'].shape for i in range(len(val))}) == 20
  sun = data.make_source(_config('sun', roots / 'sun'), 'train_labelled')
  assert len({sun[i]['image'].shape for i in range(len(sun))}) == 2
  custom = _config('folder', roots / 'folder', num_classes=3)
  items = [i for split in data.TRAIN_SPLITS + ('val',)
           for i in data.make_source(custom, split).items]
  assert {os.path.splitext(i.image)[1] for i in items} == {'.jpg', '.jpeg', '.png'}
  assert {Image.open(i.image).mode for i in items} == {'RGB', 'L'}
