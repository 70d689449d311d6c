"""Converts a PyTorch ResNet-50 `state_dict` into an `.npz` in cct-jax's Flax trunk layout.

  python tools/convert_torch_resnet.py 3x3resnet50-imagenet.pth resnet50_deep.npz
  python -m cct_jax.main --config=configs/voc.py --config.model.pretrained=resnet50_deep.npz ...

Two layouts are recognised: the deep 3x3 stem of the authors' `3x3resnet50-imagenet.pth`
(`conv1`..`conv3`, `bn1`..`bn3`, optionally under `prefix.`), which pairs with
`model.stem='deep'`, and torchvision's `resnet50` (one 7x7 `conv1`), which pairs with
`model.stem='torchvision'`. The classifier (`fc.*`) is dropped.

Inputs: a torch `.pth` / `.bin` (a bare state_dict or a checkpoint holding one under
`state_dict` or `model`), or a `.safetensors` file with the same keys. The script needs
numpy and absl-py; reading a torch file needs torch too (cct-jax does not depend on it;
torch 2.13 has wheels for Python 3.12 and 3.13), reading a `.safetensors` file only the
`safetensors` package. An input that cannot be read ends in one line naming it and what is
wrong, and exit status 1.
The tests exercise everything but torch.load.
"""

import os
import re
import sys
import zipfile
from collections.abc import Sequence

import numpy as np
from absl import app

_BN_FIELDS = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
              'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}
_KEY = re.compile(
    r'^(?:layer(?P<stage>\d)\.(?P<block>\d+)\.)?'
    r'(?:(?P<conv>conv\d)\.weight|(?P<bn>bn\d)\.(?P<bn_field>\w+)'
    r'|downsample\.(?P<ds>[01])\.(?P<ds_field>\w+))$')
# How a torch file starts: a zip archive (torch >= 1.6), or a pickle's PROTO opcode.
_ZIP_MAGIC, _PICKLE_MAGIC = b'PK\x03\x04', b'\x80'


class ConversionError(ValueError):
  pass


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  """A `.safetensors` file's tensors as NumPy arrays; no torch involved."""
  try:
    import ml_dtypes  # pylint: disable=import-outside-toplevel,unused-import  # NumPy's bfloat16
    from safetensors import SafetensorError  # pylint: disable=import-outside-toplevel
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConversionError(f'{path}: reading .safetensors needs the safetensors and ml_dtypes '
                          'packages (pip install safetensors; jax brings ml_dtypes)') from e
  try:
    return load_file(path)
  except SafetensorError as e:  # truncated, or not safetensors at all
    raise ConversionError(f'{path}: not a readable .safetensors file ({e})') from e
  except (TypeError, AttributeError) as e:  # a tensor type NumPy cannot hold (float8, ...)
    raise ConversionError(f'{path}: unsupported tensor type ({e}); save it as float32') from e


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """A torch file's state_dict as NumPy arrays."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConversionError(f'{path}: reading a torch file needs torch (pip install torch); '
                          '.safetensors files do not') from e
  try:
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-exception-caught
    # torch.load fails in many ways on a damaged file (UnpicklingError, RuntimeError from
    # its zip reader, EOFError, ...); each is the same news for the user.
    detail = ' '.join(str(e).split())
    raise ConversionError(f'{path}: not a readable torch file ({type(e).__name__}: '
                          f'{detail})') from e
  for wrapper in ('state_dict', 'model'):
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
      checkpoint = checkpoint[wrapper]
  if not isinstance(checkpoint, dict):
    raise ConversionError(f'{path}: holds a {type(checkpoint).__name__}, not a state_dict')
  return {k: v.numpy() for k, v in checkpoint.items() if hasattr(v, 'numpy')}


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """The state_dict in `path`, whose first bytes tell the format: torch writes a zip
  archive (a pickle before torch 1.6), safetensors an 8-byte header length, then the JSON
  header."""
  if not os.path.isfile(path):
    raise ConversionError(f'{path}: no such file')
  try:
    with open(path, 'rb') as f:
      head = f.read(9)
  except OSError as e:
    raise ConversionError(f'{path}: cannot read it ({e.strerror})') from e
  if head.startswith(_ZIP_MAGIC) and not zipfile.is_zipfile(path):
    raise ConversionError(f'{path}: truncated or damaged torch file (its zip archive has '
                          'no end record)')
  if head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
    return load_torch_state_dict(path)
  if path.endswith('.safetensors') or head[8:] == b'{':
    return load_safetensors(path)
  raise ConversionError(f'{path}: neither a torch file (a zip archive or a pickle) nor a '
                        '.safetensors file')


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


def main(argv: Sequence[str]) -> int:
  """`argv`: INPUT OUTPUT (the command line after the program's name). Returns the exit
  status."""
  if len(argv) != 2:
    raise app.UsageError(f'expected INPUT OUTPUT, got {len(argv)} arguments')
  source, target = argv
  try:
    arrays, stem = convert_state_dict(load_state_dict(source), source)
  except ConversionError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  try:
    np.savez(target, stem=np.array(stem), **arrays)
  except OSError as e:
    print(f'error: {target}: cannot write it ({e.strerror})', file=sys.stderr)
    return 1
  total = sum(v.size for k, v in arrays.items() if k.startswith('params/'))
  print(f'wrote {target}: {stem} stem, {len(arrays)} arrays, {total:,} parameters')
  return 0


if __name__ == '__main__':
  app.run(lambda argv: main(argv[1:]))
