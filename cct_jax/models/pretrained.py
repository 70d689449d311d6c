"""Loads ImageNet trunk weights converted by `tools/convert_torch_resnet.py` (SPEC 1).

The authors' code trains from scratch when the weight file is missing; here a missing or
mismatched file always stops the run with the file and the offending keys named.
"""

import os

import numpy as np
from flax import traverse_util


class PretrainedWeightsError(ValueError):
  pass


def load_trunk_weights(trunk_variables: dict, path: str, stem: str | None = None) -> dict:
  """Returns `trunk_variables` ({'params', 'batch_stats'} of the ResNet) filled from `path`.

  Every array of the trunk must be in the file with the same shape, and the file may hold
  nothing else: a partial load would silently train part of the trunk from scratch.
  """
  if not os.path.isfile(path):
    raise PretrainedWeightsError(
        f'{path}: no such file; convert a torch ResNet-50 with tools/convert_torch_resnet.py')
  try:
    with np.load(path) as archive:
      arrays = dict(archive)
  except (OSError, ValueError) as e:
    raise PretrainedWeightsError(f'{path}: not a readable .npz file ({e})') from e
  file_stem = str(arrays.pop('stem', ''))
  if stem and file_stem and file_stem != stem:
    raise PretrainedWeightsError(
        f"{path}: weights for the '{file_stem}' stem, but the model has stem='{stem}' "
        f"(set config.model.stem='{file_stem}')")

  expected = traverse_util.flatten_dict(trunk_variables, sep='/')
  problems = [f'missing key {k}' for k in sorted(expected.keys() - arrays.keys())]
  problems += [f'unexpected key {k}' for k in sorted(arrays.keys() - expected.keys())]
  problems += [f'shape mismatch at {k}: file {arrays[k].shape}, model {expected[k].shape}'
               for k in sorted(expected.keys() & arrays.keys())
               if arrays[k].shape != expected[k].shape]
  if problems:
    raise PretrainedWeightsError(f'{path} does not fit the model trunk:\n  ' +
                                 '\n  '.join(problems))
  loaded = {k: arrays[k].astype(expected[k].dtype) for k in expected}
  return traverse_util.unflatten_dict(loaded, sep='/')
