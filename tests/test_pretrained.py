"""Torch weight import: converter layout, per-stage parity with torch, its errors (from the
command line: `.safetensors` inputs convert without torch, and an unreadable input is one
line naming it, never a traceback), the paper configs' demand for the weights, and loading
them into every model with a trunk."""

import importlib.util
import json
import os
import struct
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from cct_jax import defaults, models
from cct_jax.models import pretrained, resnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'torch_resnet_tiny.npz')


def load_converter():
  spec = importlib.util.spec_from_file_location(
      'convert_torch_resnet', os.path.join(ROOT, 'tools', 'convert_torch_resnet.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


convert = load_converter()


def fixture_state(stem):
  with np.load(FIXTURE) as f:
    prefix = f'{stem}/state/'
    state = {k[len(prefix):]: f[k] for k in f.files if k.startswith(prefix)}
    stages = {k.split('/')[-1]: f[k] for k in f.files if k.startswith(f'{stem}/stage/')}
    return state, stages, f['input']


def write_npz(path, arrays, stem):
  np.savez(path, stem=np.array(stem), **arrays)
  return str(path)


def tiny_trunk(stem):
  return resnet.ResNet(stage_sizes=(1, 1, 2, 2), width=4, stem=stem)


@pytest.mark.parametrize('stem', ['deep', 'torchvision'])
def test_converted_weights_reproduce_torch_per_stage(stem, tmp_path):
  state, torch_stages, x = fixture_state(stem)
  arrays, detected = convert.convert_state_dict(state)
  assert detected == stem
  path = write_npz(tmp_path / 'w.npz', arrays, stem)

  trunk = tiny_trunk(stem)
  variables = jax.jit(trunk.init)(jax.random.key(0), x)
  variables = pretrained.load_trunk_weights(variables, path, stem=stem)
  _, stages = jax.jit(lambda v, x: trunk.apply(v, x, return_stages=True))(variables, x)
  assert set(stages) == set(torch_stages)
  for name, expected in torch_stages.items():
    assert stages[name].shape == expected.shape, name
    error = np.abs(np.asarray(stages[name]) - expected).max() / np.abs(expected).max()
    assert error < 1e-4, (name, error)


def test_converter_maps_names_and_transposes_kernels():
  state, _, _ = fixture_state('deep')
  arrays, _ = convert.convert_state_dict({f'module.prefix.{k}': v for k, v in state.items()})
  np.testing.assert_array_equal(arrays['params/layer3_1/conv2/kernel'],
                                state['layer3.1.conv2.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(arrays['batch_stats/layer1_0/downsample_bn/var'],
                                state['layer1.0.downsample.1.running_var'])
  np.testing.assert_array_equal(arrays['params/bn2/scale'], state['bn2.weight'])
  assert not any(k.startswith('params/fc') for k in arrays)


def test_converter_rejects_unknown_layout_and_keys():
  with pytest.raises(convert.ConversionError, match=r'w\.pth: unknown layout'):
    convert.convert_state_dict({'features.0.weight': np.zeros((8, 3, 3, 3))}, 'w.pth')
  state, _, _ = fixture_state('deep')
  with pytest.raises(convert.ConversionError, match=r"w\.pth: unexpected key 'layer1\.0\.se\.w'"):
    convert.convert_state_dict({**state, 'layer1.0.se.w': np.zeros(3)}, 'w.pth')


def test_loader_errors_name_the_file_and_the_key(tmp_path):
  state, _, x = fixture_state('deep')
  arrays, _ = convert.convert_state_dict(state)
  variables = jax.eval_shape(tiny_trunk('deep').init, jax.random.key(0), x)

  with pytest.raises(pretrained.PretrainedWeightsError, match='nowhere.npz: no such file'):
    pretrained.load_trunk_weights(variables, str(tmp_path / 'nowhere.npz'))

  bad = dict(arrays)
  bad['params/layer2_0/conv1/kernel'] = np.zeros((1, 1, 3, 3), np.float32)
  del bad['batch_stats/bn3/mean']
  path = write_npz(tmp_path / 'bad.npz', bad, 'deep')
  with pytest.raises(pretrained.PretrainedWeightsError) as error:
    pretrained.load_trunk_weights(variables, path)
  message = str(error.value)
  assert 'bad.npz' in message
  assert 'missing key batch_stats/bn3/mean' in message
  assert 'shape mismatch at params/layer2_0/conv1/kernel' in message

  path = write_npz(tmp_path / 'tv.npz', arrays, 'torchvision')
  with pytest.raises(pretrained.PretrainedWeightsError,
                     match="tv.npz: weights for the 'torchvision'"):
    pretrained.load_trunk_weights(variables, path, stem='deep')


PAPER_CONFIGS = ('voc.py', 'cityscapes.py', 'camvid.py', 'cityscapes_camvid.py',
                 'cityscapes_sun.py')


@pytest.mark.parametrize('name', PAPER_CONFIGS)
def test_paper_configs_demand_the_weights_or_an_explicit_none(name, tmp_path):
  config = defaults.load_config_file(os.path.join(ROOT, 'configs', name), '100')
  with pytest.raises(pretrained.PretrainedWeightsError,
                     match=r'model.pretrained is not set: .*3x3resnet50-imagenet.pth.*'
                           r'tools/convert_torch_resnet.py'):
    pretrained.check_pretrained_config(config.model)
  config.model.pretrained = str(tmp_path / 'resnet50_deep.npz')
  with pytest.raises(pretrained.PretrainedWeightsError, match='resnet50_deep.npz: no such file'):
    pretrained.check_pretrained_config(config.model)
  (tmp_path / 'resnet50_deep.npz').write_bytes(b'')
  assert pretrained.weights_file(config.model) == str(tmp_path / 'resnet50_deep.npz')
  config.model.pretrained = 'none'
  assert pretrained.weights_file(config.model) is None
  # A classification run's encoder brings its trunk along (sec. 3.3).
  config.model.update(pretrained='', encoder_from=str(tmp_path / 'classifier'))
  assert pretrained.weights_file(config.model) is None


def test_the_default_and_tiny_models_train_from_scratch():
  for model_cfg in (models.default_model_config(), models.tiny_model_config(5)):
    assert model_cfg.pretrained == 'none'
    assert pretrained.weights_file(model_cfg) is None


@pytest.mark.parametrize('kind', ['classifier', 'segmentation'])
def test_trunk_weights_load_into_the_classifier_and_the_segmentation_model(kind, tmp_path):
  state, _, _ = fixture_state('deep')
  arrays, _ = convert.convert_state_dict(state)
  path = write_npz(tmp_path / 'w.npz', arrays, 'deep')
  model_cfg = models.tiny_model_config(5)
  model_cfg.update(stage_sizes=(1, 1, 2, 2), width=4, psp_features=8)  # the fixture's trunk
  model = (models.classifier_from_config(model_cfg, 4, 'encoder') if kind == 'classifier'
           else models.model_from_config(model_cfg, dict(dropout=1)))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  variables = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), shapes)  # no compile
  params, batch_stats = pretrained.with_trunk_weights(
      variables['params'], variables['batch_stats'], path, stem='deep')

  loaded = {'params': params, 'batch_stats': batch_stats}
  flat = traverse_util.flatten_dict(loaded, sep='/')
  trunk = {k.replace('/encoder/trunk', ''): v for k, v in flat.items() if '/encoder/trunk/' in k}
  assert trunk.keys() == arrays.keys()
  for key, value in trunk.items():
    np.testing.assert_array_equal(value, arrays[key], err_msg=key)
  rest = [k for k in flat if '/encoder/trunk/' not in k]
  assert rest and all(np.all(flat[k] == 0.5) for k in rest)
  assert traverse_util.flatten_dict(dict(variables), sep='/').keys() == flat.keys()


# --------------------------------------------------------------------------------------
# The converter from the command line.


def _convert(capsys, *argv) -> tuple[int, str, str]:
  status = convert.main([str(a) for a in argv])
  captured = capsys.readouterr()
  return status, captured.out, captured.err


@pytest.mark.parametrize('stem, name', [('deep', 'w.safetensors'),
                                        ('torchvision', 'model_weights')])
def test_safetensors_converts_to_the_same_npz_as_a_torch_state_dict(tmp_path, capsys, stem,
                                                                     name):
  state = fixture_state(stem)[0]
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
           for k, v in fixture_state('deep')[0].items()}
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
  save_file(fixture_state('deep')[0], str(good))
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
  save_file(fixture_state('torchvision')[0], str(source))
  output = tmp_path / 'no_such_folder' / 'out.npz'
  status, _, err = _convert(capsys, source, output)
  assert status == 1
  assert err == f'error: {output}: cannot write it (No such file or directory)\n'
