"""Torch weight import: converter layout, per-stage parity with torch, its errors, the
paper configs' demand for the weights, and loading them into every model with a trunk."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

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
  model = (models.classifier_from_config(model_cfg, 4) if kind == 'classifier'
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
