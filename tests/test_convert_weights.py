"""tools/convert_torch_resnet.py from the command line (issue 27): `.safetensors` inputs
convert without torch, and an unreadable input is one line naming it, never a traceback."""

import importlib.util
import json
import os
import struct
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'torch_resnet_tiny.npz')


def _load_converter():
  spec = importlib.util.spec_from_file_location(
      'convert_torch_resnet', os.path.join(ROOT, 'tools', 'convert_torch_resnet.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


convert = _load_converter()


def _fixture_state(stem) -> dict[str, np.ndarray]:
  """The tiny torch ResNet's state_dict (tools/make_torch_parity_fixture.py)."""
  prefix = f'{stem}/state/'
  with np.load(FIXTURE) as f:
    return {k[len(prefix):]: f[k] for k in f.files if k.startswith(prefix)}


def _convert(capsys, *argv) -> tuple[int, str, str]:
  status = convert.main([str(a) for a in argv])
  captured = capsys.readouterr()
  return status, captured.out, captured.err


@pytest.mark.parametrize('stem, name', [('deep', 'w.safetensors'),
                                        ('torchvision', 'model_weights')])
def test_safetensors_converts_to_the_same_npz_as_a_torch_state_dict(tmp_path, capsys, stem,
                                                                     name):
  state = _fixture_state(stem)
  source = tmp_path / name  # no suffix: the file's first bytes say it is safetensors
  save_file(state, str(source))
  status, out, err = _convert(capsys, source, tmp_path / 'out.npz')
  assert status == 0, err
  assert out.startswith(f'wrote {tmp_path / "out.npz"}: {stem} stem')

  expected, _ = convert.convert_state_dict(state)  # what a .pth of the same state gives
  with np.load(tmp_path / 'out.npz') as written:
    assert str(written['stem']) == stem
    assert set(written.files) == set(expected) | {'stem'}
    for key, value in expected.items():
      np.testing.assert_array_equal(written[key], value, err_msg=key)


def test_bfloat16_safetensors_convert_to_float32(tmp_path):
  state = {k: v.astype(ml_dtypes.bfloat16) if v.dtype == np.float32 else v
           for k, v in _fixture_state('deep').items()}
  save_file(state, str(tmp_path / 'w.safetensors'))
  # A fresh interpreter, as a user runs it: here no jax import has named bfloat16 for NumPy.
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'convert_torch_resnet.py'),
                           tmp_path / 'w.safetensors', tmp_path / 'out.npz'],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  expected, _ = convert.convert_state_dict(state)
  with np.load(tmp_path / 'out.npz') as written:
    for key, value in expected.items():
      assert written[key].dtype == np.float32
      np.testing.assert_array_equal(written[key], value, err_msg=key)


def _float8_safetensors(path):
  """Valid safetensors whose one tensor has a type NumPy cannot hold."""
  header = json.dumps({'conv1.weight': {'dtype': 'F8_E4M3', 'shape': [2],
                                        'data_offsets': [0, 2]}})
  path.write_bytes(struct.pack('<Q', len(header)) + header.encode() + bytes(2))


def _truncated_torch_zip(path):
  # torch >= 1.6 saves a zip archive; cut, it loses the closing directory.
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', bytes(2000))
  path.write_bytes(path.read_bytes()[:1000])


def test_unreadable_inputs_end_in_one_line_naming_the_file(tmp_path, capsys):
  good = tmp_path / 'good.safetensors'
  save_file(_fixture_state('deep'), str(good))
  truncated = tmp_path / 'truncated.safetensors'
  truncated.write_bytes(good.read_bytes()[:-100])
  header_only = tmp_path / 'header_only.safetensors'
  header_only.write_bytes(good.read_bytes()[:20])
  text = tmp_path / 'notes.pth'
  text.write_text('not weights at all\n')
  cut_zip = tmp_path / 'cut.pth'
  _truncated_torch_zip(cut_zip)
  other_model = tmp_path / 'vit.safetensors'
  save_file({'patch_embed.proj.weight': np.zeros((8, 3, 4, 4), np.float32)}, str(other_model))
  float8 = tmp_path / 'f8.safetensors'
  _float8_safetensors(float8)

  expected = {
      tmp_path / 'nowhere.safetensors': 'no such file',
      # safetensors' own words follow in brackets.
      truncated: 'not a readable .safetensors file (',
      header_only: 'not a readable .safetensors file (',
      text: 'neither a torch file (a zip archive or a pickle) nor a .safetensors file',
      cut_zip: 'truncated or damaged torch file (its zip archive has no end record)',
      other_model: 'unknown layout: neither the deep 3x3 stem',
      float8: 'unsupported tensor type',
  }
  for source, problem in expected.items():
    status, out, err = _convert(capsys, source, tmp_path / 'out.npz')
    assert status == 1 and not out
    assert err.count('\n') == 1 and err.startswith(f'error: {source}: {problem}'), err
  assert not (tmp_path / 'out.npz').exists()


def test_unwritable_output_is_one_line(tmp_path, capsys):
  source = tmp_path / 'w.safetensors'
  save_file(_fixture_state('torchvision'), str(source))
  output = tmp_path / 'no_such_folder' / 'out.npz'
  status, _, err = _convert(capsys, source, output)
  assert status == 1
  assert err == f'error: {output}: cannot write it (No such file or directory)\n'
