"""Bad input is an error that names the file and the problem; all problems at once."""

import os

import numpy as np
import pytest
from PIL import Image

from cct_jax import data
from cct_jax.data import fake, voc

JPEGS = 'VOCdevkit/VOC2012/JPEGImages'
MASKS = 'VOCdevkit/VOC2012/SegmentationClassAug'


@pytest.fixture
def root(tmp_path):
  fake.write_voc(tmp_path)
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


def test_healthy_dataset_report(root):
  lines = []
  report = data.check_dataset(_config(root), print_fn=lines.append)
  assert [(s.split, s.num_examples) for s in report.splits] == [
      ('train_labelled', 2), ('train_unlabelled', 6), ('val', 3)]
  assert report.splits[1].class_pixels is None
  val = report.splits[2]
  assert val.class_pixels.sum() + val.ignored_pixels == 3 * 48 * 64
  assert 'background' in lines[0] and 'train_unlabelled' in lines[0]


def test_missing_root_and_split_file(root, tmp_path):
  problems = _problems(_config(tmp_path / 'nowhere'))
  assert any('nowhere' in p and 'does not exist' in p for p in problems)
  problems = _problems(_config(root, split_dir=str(tmp_path / 'splits')))
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
  Image.open(path).crop((0, 0, 60, 40)).save(path)
  assert any(f'{path}: mask is 40x60 but its image is 48x64' in p
             for p in _problems(_config(root)))


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
  for example in (source[0], source[1]):
    assert example['image'].shape == (48, 64, 3) and example['image'].dtype == np.uint8
  data.check_dataset(_config(root), print_fn=lambda _: None)


def test_image_smaller_than_crop_is_padded(root):
  cfg = _config(root, crop_size=96, base_size=0)  # Images are 48x64.
  labelled, _ = next(data.make_train_streams(cfg))
  assert labelled['image'].shape == (10, 96, 96, 3)
  assert (labelled['mask'] == data.IGNORE_INDEX).mean() > 0.5


def test_num_classes_must_match_the_dataset(root):
  with pytest.raises(ValueError, match='data.num_classes=19 but voc has 21 classes'):
    data.make_source(_config(root, num_classes=19), 'val')
