"""Converts a PyTorch ResNet-50 `state_dict` into an `.npz` in cct-jax's Flax trunk layout.

  python tools/convert_torch_resnet.py 3x3resnet50-imagenet.pth resnet50_deep.npz
  python -m cct_jax.main --config=configs/voc.py --config.model.pretrained=resnet50_deep.npz ...

Two layouts are recognised: the deep 3x3 stem of the authors' `3x3resnet50-imagenet.pth`
(`conv1`..`conv3`, `bn1`..`bn3`, optionally under `prefix.`), which pairs with
`model.stem='deep'`, and torchvision's `resnet50` (one 7x7 `conv1`), which pairs with
`model.stem='torchvision'`. The classifier (`fc.*`) is dropped.

Only reading the `.pth` needs torch, and cct-jax does not depend on it. torch 2.13 runs on
Python 3.11, so use a separate environment for this one step:
  python3.11 -m venv /tmp/torch && /tmp/torch/bin/pip install torch==2.13.0 numpy
  /tmp/torch/bin/python tools/convert_torch_resnet.py IN.pth OUT.npz
Everything but `load_torch_state_dict` is plain NumPy and is what the tests exercise.
"""

import argparse
import re
import sys

import numpy as np

_BN_FIELDS = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
              'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}
_KEY = re.compile(
    r'^(?:layer(?P<stage>\d)\.(?P<block>\d+)\.)?'
    r'(?:(?P<conv>conv\d)\.weight|(?P<bn>bn\d)\.(?P<bn_field>\w+)'
    r'|downsample\.(?P<ds>[01])\.(?P<ds_field>\w+))$')


class ConversionError(ValueError):
  pass


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a `.pth` (a bare state_dict or a checkpoint holding one) into NumPy arrays."""
  import torch  # pylint: disable=import-outside-toplevel

  checkpoint = torch.load(path, map_location='cpu', weights_only=True)
  for wrapper in ('state_dict', 'model'):
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
      checkpoint = checkpoint[wrapper]
  return {k: v.numpy() for k, v in checkpoint.items() if hasattr(v, 'numpy')}


def detect_stem(state: dict[str, np.ndarray], source: str) -> str:
  if 'conv2.weight' in state and 'conv3.weight' in state:
    return 'deep'
  if 'conv1.weight' in state and state['conv1.weight'].shape[-2:] == (7, 7):
    return 'torchvision'
  raise ConversionError(
      f'{source}: unknown layout: neither the deep 3x3 stem (conv1..conv3) nor torchvision\'s '
      f'7x7 conv1; first keys: {sorted(state)[:5]}')


def flax_key(torch_key: str, source: str) -> str | None:
  """The Flax trunk path of a torch key, or None for keys the trunk does not use."""
  if torch_key.startswith('fc.') or torch_key.endswith('num_batches_tracked'):
    return None
  match = _KEY.match(torch_key)
  if match is None:
    raise ConversionError(f'{source}: unexpected key {torch_key!r} for a ResNet state_dict')
  scope = f"layer{match['stage']}_{match['block']}/" if match['stage'] else ''
  if match['conv']:
    return f"params/{scope}{match['conv']}/kernel"
  if match['ds'] == '0':
    if match['ds_field'] != 'weight':
      raise ConversionError(f'{source}: unexpected key {torch_key!r}: downsample conv has no bias')
    return f'params/{scope}downsample_conv/kernel'
  module = match['bn'] or 'downsample_bn'
  field = match['bn_field'] or match['ds_field']
  if field not in _BN_FIELDS:
    raise ConversionError(f'{source}: unexpected key {torch_key!r}: unknown BatchNorm field')
  collection, name = _BN_FIELDS[field]
  return f'{collection}/{scope}{module}/{name}'


def convert_state_dict(state: dict[str, np.ndarray], source: str = '<state_dict>'):
  """torch names and layouts -> Flax paths and layouts; conv kernels OIHW -> HWIO.

  Returns (arrays, stem). `source` names the input in error messages.
  """
  state = {re.sub(r'^(module\.)?(prefix\.)?', '', k): v for k, v in state.items()}
  stem = detect_stem(state, source)
  arrays = {}
  for torch_key, value in state.items():
    key = flax_key(torch_key, source)
    if key is None:
      continue
    value = np.asarray(value, np.float32)
    if key.endswith('/kernel'):
      if value.ndim != 4:
        raise ConversionError(f'{source}: {torch_key!r} should be a 4-d conv weight, '
                              f'got shape {value.shape}')
      value = value.transpose(2, 3, 1, 0)
    arrays[key] = value
  return arrays, stem


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('input', help='a torch .pth state_dict')
  parser.add_argument('output', help='the .npz to write')
  args = parser.parse_args(argv)
  try:
    arrays, stem = convert_state_dict(load_torch_state_dict(args.input), args.input)
  except (ConversionError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  np.savez(args.output, stem=np.array(stem), **arrays)
  total = sum(v.size for k, v in arrays.items() if k.startswith('params/'))
  print(f'wrote {args.output}: {stem} stem, {len(arrays)} arrays, {total:,} parameters')
  return 0


if __name__ == '__main__':
  sys.exit(main())
