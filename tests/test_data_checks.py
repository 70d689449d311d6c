"""Bad input is an error that names the file and the problem; all problems at once."""

import os

import numpy as np
import pytest
from PIL import Image

import fakes
from cct_jax import data
from cct_jax.data import pipeline, voc

JPEGS = 'VOCdevkit/VOC2012/JPEGImages'
MASKS = 'VOCdevkit/VOC2012/SegmentationClassAug'


@pytest.fixture
def root(tmp_path):
  fakes.write_voc_folder(str(tmp_path))
  return tmp_path


def _config(root, **overrides):
  cfg = data.default_data_config('voc')
  cfg.update(dict(root=str(root), num_labelled=2))
  cfg.update(overrides)
  return cfg


def _problems(cfg) -> list[str]:
  with pytest.raises(data.DataError) as error:
    data.check_dataset(cfg, print_fn=lambda _: None)
  assert str(error.value).startswith(f'{len(error.value.problems)} problem(s)')
  return error.value.problems


def _val_id(root, k=0):
  return voc.read_lines(os.path.join(root, voc.find_root(str(root)),
                                     'ImageSets/Segmentation/val.txt'))[k]


def _image_size(path) -> tuple[int, int]:
  width, height = Image.open(path).size
  return height, width


def test_healthy_dataset_report(root):
  lines = []
  report = data.check_dataset(_config(root), print_fn=lines.append)
  assert [(s.split, s.num_examples) for s in report.splits] == [
      ('train_labelled', 2), ('train_unlabelled', 6), ('val', 3)]
  assert report.splits[1].class_pixels is None
  val = report.splits[2]
  val_pixels = sum(np.prod(_image_size(root / JPEGS / f'{_val_id(root, k)}.jpg'))
                   for k in range(3))
  assert val.class_pixels.sum() + val.ignored_pixels == val_pixels
  assert 'background' in lines[0] and 'train_unlabelled' in lines[0]
  assert ('labelled split: 2 labelled drawn by data.split_seed=0 from the 8 of '
          'ImageSets/Segmentation/train_aug.txt') in lines[0]


def test_missing_root_and_split_file(root, tmp_path):
  problems = _problems(_config(tmp_path / 'nowhere'))
  assert any('nowhere' in p and 'does not exist' in p for p in problems)
  cfg = _config(root)
  cfg.voc.split_dir = str(tmp_path / 'splits')
  problems = _problems(cfg)
  assert any('2_train_supervised.txt: split file does not exist' in p for p in problems)


def test_every_problem_is_listed_at_once(root):
  val = [_val_id(root, k) for k in range(3)]
  os.remove(root / JPEGS / f'{val[0]}.jpg')  # Listed id without a file.
  (root / JPEGS / f'{val[1]}.jpg').write_bytes(b'not an image')  # Unreadable.
  mask_path = root / MASKS / f'{val[2]}.png'
  mask = np.asarray(Image.open(mask_path)).copy()
  mask[0, 0] = 30  # Not a VOC class and not 255.
  Image.fromarray(mask).save(mask_path)

  problems = _problems(_config(root))
  assert len(problems) == 3, problems
  assert any(f'{val[0]}.jpg: image of {val[0]!r} does not exist' in p for p in problems)
  assert any(f'{val[1]}.jpg: unreadable or truncated image' in p for p in problems)
  assert any(f'{val[2]}.png: mask values [30] are not labels of this dataset '
             '(valid: 0-20, 255)' in p for p in problems)
  assert all(p.startswith('[val]') for p in problems)


def test_truncated_image(root):
  path = root / JPEGS / f'{_val_id(root)}.jpg'
  path.write_bytes(path.read_bytes()[:300])
  problems = _problems(_config(root))
  assert any(f'{path}: unreadable or truncated image' in p for p in problems)


def test_mask_of_another_size(root):
  path = root / MASKS / f'{_val_id(root)}.png'
  height, width = _image_size(path)
  Image.open(path).crop((0, 0, width - 4, height - 8)).save(path)
  assert any(f'{path}: mask is {height - 8}x{width - 4} but its image is {height}x{width}'
             in p for p in _problems(_config(root)))


def test_colour_mask(root):
  path = root / MASKS / f'{_val_id(root)}.png'
  Image.open(path).convert('RGB').save(path)
  assert any(f'{path}: colour mask (mode RGB); expected a single-channel index mask' in p
             for p in _problems(_config(root)))


def test_greyscale_and_rgba_images_become_rgb(root):
  grey, rgba = (root / JPEGS / f'{_val_id(root, k)}.jpg' for k in (0, 1))
  Image.open(grey).convert('L').save(grey, format='JPEG')
  Image.open(rgba).convert('RGBA').save(rgba, format='PNG')  # A PNG named .jpg, too.
  source = data.make_source(_config(root), 'val')
  for example, path in ((source[0], grey), (source[1], rgba)):
    assert example['image'].shape == (*_image_size(path), 3)
    assert example['image'].dtype == np.uint8
  data.check_dataset(_config(root), print_fn=lambda _: None)


def test_image_smaller_than_crop_is_padded(root):
  cfg = _config(root, crop_size=256, base_size=0)  # Images are at most 120x120.
  labelled, _ = next(pipeline.make_train_streams(cfg))
  assert labelled['image'].shape == (10, 256, 256, 3)
  assert (labelled['mask'] == data.IGNORE_INDEX).mean() > 0.5


def test_num_classes_must_match_the_dataset(root):
  with pytest.raises(ValueError, match='data.num_classes=19 but voc has 21 classes'):
    data.make_source(_config(root, num_classes=19), 'val')
