"""Prediction a user can trust with a folder of photos (cct_jax/predict.py): no input written
over, no two outputs on one name, unreadable files skipped by name with a summary and a
failing status, every pixel format brought to RGB, and the Python API on an array.

The model is the demo's tiny one, freshly initialised and saved as a checkpoint: what is
tested is the handling of files and pixels, which does not depend on training.
"""

import io
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cct_jax import checkpointing, defaults, predict, segmentation
from cct_jax.data import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIF_ORIENTATION = 0x0112


def _config():
  return defaults.load_config_file(os.path.join(REPO, 'configs', 'demo.py'), 'smoke')


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A workdir holding one checkpoint (step 1) of the demo smoke model, untrained."""
  path = tmp_path_factory.mktemp('predict_workdir')
  state = segmentation.build(_config()).create_state(1)
  checkpointing.save(checkpointing.manager(str(path / 'checkpoints')), 1, state)
  return path


@pytest.fixture(scope='module')
def predictor(workdir):
  return predict.Predictor(_config(), str(workdir))


def _sixteen_bit_ramp(height: int = 40, width: int = 60) -> np.ndarray:
  """uint16 greyscale spanning the whole 16-bit range: clipped at 255, almost all white."""
  return np.linspace(0, 65535, height * width).round().astype(np.uint16).reshape(height,
                                                                                 width)


@pytest.fixture(scope='module')
def bad_folder(tmp_path_factory):
  """A folder as users have them: good photos, two of one stem, a 16-bit PNG, a corrupt
  JPEG (its header intact, its data cut), a truncated PNG, a text file named .jpg, a hidden
  file and a subfolder."""
  folder = tmp_path_factory.mktemp('photos')
  Image.fromarray(_photo(50, 70, seed=1)).save(folder / 'good.png')
  Image.fromarray(_photo(48, 64, seed=2)).save(folder / 'ok.jpg', quality=95)
  Image.fromarray(_photo(30, 20, seed=3)).save(folder / 'ok.png')
  Image.fromarray(_sixteen_bit_ramp()).save(folder / 'sixteen.png')
  jpeg = io.BytesIO()
  Image.fromarray(_photo(48, 64, seed=4)).save(jpeg, 'JPEG')
  (folder / 'corrupt.jpg').write_bytes(jpeg.getvalue()[:400])
  png = io.BytesIO()
  Image.fromarray(_photo(48, 64, seed=5)).save(png, 'PNG')
  (folder / 'truncated.png').write_bytes(png.getvalue()[:len(png.getvalue()) // 2])
  (folder / 'notes.jpg').write_text('not a photo')
  (folder / '.DS_Store').write_bytes(b'\0\1')
  (folder / 'older').mkdir()
  Image.fromarray(_photo(10, 10)).save(folder / 'older' / 'inside.png')
  return folder


def _contents(folder) -> dict:
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------------------
# Pixels.


def test_sixteen_bit_pngs_are_scaled_to_eight_bits_not_clipped(tmp_path):
  ramp = _sixteen_bit_ramp()
  expected = np.round(ramp / 257).astype(np.uint8)
  Image.fromarray(ramp).save(tmp_path / 'little.png')
  big_endian = Image.frombytes('I;16B', ramp.shape[::-1], ramp.astype('>u2').tobytes())
  assert Image.open(tmp_path / 'little.png').mode == 'I;16'
  for rgb in (predict.read_photo(str(tmp_path / 'little.png')), predict.to_rgb(big_endian),
              predict.array_to_rgb(ramp)):
    assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.repeat(expected[..., None], 3, axis=-1))
  assert expected.min() == 0 and expected.max() == 255 and np.mean(expected == 255) < 0.01


def test_palette_greyscale_cmyk_and_alpha_images_come_to_rgb():
  rgb = np.array([[[200, 10, 30], [0, 128, 255]]], np.uint8)
  grey = np.array([[0, 77]], np.uint8)
  # Alpha: opaque keeps its colour, transparent is white, half is half-way to white.
  rgba = np.concatenate([rgb, np.array([[[255], [0]]], np.uint8)], axis=-1)
  np.testing.assert_array_equal(predict.to_rgb(Image.fromarray(rgba, 'RGBA')),
                                [[[200, 10, 30], [255, 255, 255]]])
  half = rgba.copy()
  half[0, 1, 3] = 128
  np.testing.assert_array_equal(predict.to_rgb(Image.fromarray(half, 'RGBA'))[0, 1],
                                np.round(np.array([0, 128, 255]) * 128 / 255 +
                                         255 * 127 / 255))
  la = Image.fromarray(np.stack([grey, np.array([[0, 255]], np.uint8)], -1), 'LA')
  np.testing.assert_array_equal(predict.to_rgb(la), [[[255] * 3, [77] * 3]])
  np.testing.assert_array_equal(predict.to_rgb(Image.fromarray(grey, 'L')),
                                np.repeat(grey[..., None], 3, -1))
  palette_image = Image.fromarray(rgb).quantize(colors=2)
  assert palette_image.mode == 'P'
  np.testing.assert_array_equal(predict.to_rgb(palette_image), rgb)
  palette_image.info['transparency'] = int(np.asarray(palette_image)[0, 1])
  np.testing.assert_array_equal(predict.to_rgb(palette_image)[0, 1], [255, 255, 255])
  np.testing.assert_array_equal(predict.to_rgb(palette_image.convert('PA'))[0, 0],
                                [200, 10, 30])
  cmyk = Image.fromarray(rgb).convert('CMYK')
  assert cmyk.mode == 'CMYK'
  np.testing.assert_array_equal(predict.to_rgb(cmyk), rgb)
  # Arrays: floats in [0, 1], a single channel; other kinds are refused by name.
  np.testing.assert_array_equal(predict.array_to_rgb(rgb / 255.0), rgb)
  np.testing.assert_array_equal(predict.array_to_rgb(grey[..., None]),
                                np.repeat(grey[..., None], 3, -1))
  with pytest.raises(predict.UnsupportedPixels, match=r'\[0, 1\]'):
    predict.array_to_rgb(rgb.astype(np.float32))
  with pytest.raises(predict.UnsupportedPixels, match='int64'):
    predict.array_to_rgb(rgb.astype(np.int64))
  with pytest.raises(predict.UnsupportedPixels, match='shape'):
    predict.array_to_rgb(np.zeros((4, 4, 2), np.uint8))


def test_exif_orientation_is_applied(tmp_path):
  stored = _photo(30, 40)
  exif = Image.Exif()
  exif[EXIF_ORIENTATION] = 6  # turn 90 degrees clockwise to view
  Image.fromarray(stored).save(tmp_path / 'phone.png', exif=exif)
  upright = predict.read_photo(str(tmp_path / 'phone.png'))
  np.testing.assert_array_equal(upright, np.rot90(stored, k=-1))


# --------------------------------------------------------------------------------------
# Names and places.


def test_outputs_keep_the_extension_where_stems_collide():
  keys = predict.output_keys(['in/ok.jpg', 'in/ok.png', 'in/alone.png', 'in/Case.PNG',
                              'in/case.jpg', 'in/x.jpg', 'in/x.jpg.png'])
  assert keys == ['ok.jpg', 'ok.png', 'alone', 'Case.PNG', 'case.jpg', 'x', 'x.jpg.png']
  outputs = [f'{k}{end}'.lower() for k in keys for end in ('.png', '_overlay.jpg')]
  assert len(set(outputs)) == len(outputs)


def test_output_equal_to_or_inside_the_input_is_refused_before_anything_runs(
    bad_folder, tmp_path):
  before = _contents(bad_folder)
  for output in (bad_folder, bad_folder / 'predictions', bad_folder / '..' / bad_folder.name):
    # No checkpoint is needed to refuse: the workdir is empty.
    with pytest.raises(DataError, match='the input folder') as refused:
      predict.predict_folder(_config(), str(tmp_path / 'no_run'), str(bad_folder),
                             str(output))
    assert '\n' not in str(refused.value)  # the entry point's one `error:` line
  with pytest.raises(DataError, match='the folder of the input'):  # a file: its folder
    predict.check_output_outside_input(str(bad_folder / 'good.png'), str(bad_folder))
  predict.check_output_outside_input(str(bad_folder / 'good.png'), str(bad_folder / 'out'))
  predict.check_output_outside_input(str(bad_folder), str(tmp_path / 'elsewhere'))
  with pytest.raises(DataError, match='no such file or folder'):
    predict.list_inputs(str(tmp_path / 'missing'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError, match='no files to predict'):
    predict.list_inputs(str(tmp_path / 'empty'))
  assert _contents(bad_folder) == before
  assert not (bad_folder / 'predictions').exists()


# --------------------------------------------------------------------------------------
# The model.


def test_a_folder_with_bad_files_predicts_the_others_and_names_the_rest(
    predictor, bad_folder, tmp_path, caplog):
  output = tmp_path / 'out'
  with caplog.at_level(logging.WARNING):
    summary = predictor.write_predictions(str(bad_folder), str(output))
  warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  skipped = [line for line in warned if line.startswith('skipped ')]
  assert len(skipped) == 3
  for name, why in (('corrupt.jpg', 'Truncated File Read'),
                    ('truncated.png', 'image file is truncated'),
                    ('notes.jpg', 'not an image')):
    assert any(str(bad_folder / name) in line and why in line for line in skipped), name
  assert sorted(os.path.basename(p) for p in summary.predicted) == [
      'good.png', 'ok.jpg', 'ok.png', 'sixteen.png']
  assert len(summary.skipped) == 3
  assert str(summary) == (f'predicted 4 image(s): a label PNG and an overlay each in '
                          f'{output}; skipped 3 of 7 file(s) (warned above)')
  assert sorted(os.listdir(output)) == sorted(
      f'{key}{end}' for key in ('good', 'ok.jpg', 'ok.png', 'sixteen')
      for end in ('.png', '_overlay.jpg'))
  for key, source in (('good', 'good.png'), ('ok.jpg', 'ok.jpg'), ('ok.png', 'ok.png'),
                      ('sixteen', 'sixteen.png')):
    labels = Image.open(output / f'{key}.png')
    assert labels.mode == 'P' and labels.size == Image.open(bad_folder / source).size
    assert np.asarray(labels).max() < 5
    assert Image.open(output / f'{key}_overlay.jpg').size == labels.size
  # The 16-bit PNG was predicted as its 8-bit scaling, not as clipped white.
  np.testing.assert_array_equal(
      np.asarray(Image.open(output / 'sixteen.png')),
      predictor.predict(np.round(_sixteen_bit_ramp() / 257).astype(np.uint8)))


def test_predictor_on_arrays_and_images_matches_the_folder_path(predictor, tmp_path):
  photo = _photo(50, 70, seed=7)
  labels = predictor.predict(photo)
  assert labels.shape == (50, 70) and labels.dtype == np.uint8 and labels.max() < 5
  # A single file as the input, through the same path.
  Image.fromarray(photo).save(tmp_path / 'one.png')
  summary = predictor.write_predictions(str(tmp_path / 'one.png'), str(tmp_path / 'out'))
  assert summary.written == ['one'] and not summary.skipped
  assert sorted(os.listdir(tmp_path / 'out')) == ['one.png', 'one_overlay.jpg']
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'out' / 'one.png')), labels)
  # The same pixels as a Pillow image, as uint16 and as floats give the same labels.
  np.testing.assert_array_equal(predictor.predict(Image.fromarray(photo)), labels)
  np.testing.assert_array_equal(predictor.predict(photo.astype(np.uint16) * 257), labels)
  np.testing.assert_array_equal(predictor.predict(photo / 255.0), labels)


def test_command_line_exits_non_zero_after_predicting_what_it_could(workdir, bad_folder,
                                                                   tmp_path):
  output = tmp_path / 'predictions'
  result = subprocess.run(
      [sys.executable, '-m', 'cct_jax.main', '--config=configs/demo.py:smoke',
       f'--workdir={workdir}', '--mode=predict', f'--input={bad_folder}',
       f'--output={output}'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert lines[-1] == (f'error: predicted 4 image(s): a label PNG and an overlay each in '
                       f'{output}; skipped 3 of 7 file(s) (warned above)')
  for name in ('corrupt.jpg', 'truncated.png', 'notes.jpg'):
    assert sum(f'skipped {bad_folder / name}: ' in line for line in lines) == 1, name
  assert len(os.listdir(output)) == 8
