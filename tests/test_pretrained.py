"""Torch weight import: converter layout, per-stage parity with torch, and its errors."""

import importlib.util
import os

import jax
import numpy as np
import pytest

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
  with pytest.raises(pretrained.PretrainedWeightsError, match="tv.npz: weights for the 'torchvision'"):
    pretrained.load_trunk_weights(variables, path, stem='deep')
