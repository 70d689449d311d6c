"""The trunk's ImageNet weights (paper sec. 4.1: a ResNet-50 pre-trained on ImageNet),
converted from PyTorch by `tools/convert_torch_resnet.py`.

`model.pretrained` names the converted `.npz`, or is `'none'` to train the trunk from
scratch. The paper's configs leave it empty and stop before anything starts until it is
set: the authors' code trains from scratch when its weight file is missing, without a word,
and a run from scratch misses the paper's numbers by far. Here a missing or mismatched file
always stops the run with the file and the offending keys named.

The file may be local or on a bucket (`gs://...`, read through etils.epath with gcsfs:
`pip install cct-jax[gcs]`), so that every worker of a pod slice reads the same one.
"""

import io

import numpy as np
from absl import logging
from etils import epath
from flax import traverse_util

from cct_jax import errors

FROM_SCRATCH = 'none'
# The paper's configs: no weights file by default, so the run stops until `model.pretrained`
# names one or FROM_SCRATCH.
REQUIRED = ''

WHERE_THE_WEIGHTS_COME_FROM = (
    "the paper's trunk is the authors' deep-stem ImageNet ResNet-50, 3x3resnet50-imagenet.pth "
    '(linked from the README of github.com/yassouali/CCT; model.stem=deep), or torchvision\'s '
    'ResNet-50 (model.stem=torchvision); convert it with '
    '`python tools/convert_torch_resnet.py 3x3resnet50-imagenet.pth resnet50_deep.npz` and pass '
    '--config.model.pretrained=resnet50_deep.npz (README: "ImageNet weights from PyTorch"), '
    f"or --config.model.pretrained={FROM_SCRATCH} to train the trunk from scratch")


class PretrainedWeightsError(errors.UserError):
  pass


def check_pretrained_config(model_cfg) -> None:
  """Stops a run whose `model.pretrained` is empty or names no file.

  An encoder taken from a classification run (`model.encoder_from`, sec. 3.3) brings its
  trunk along, so it needs no weights file of its own.
  """
  setting = model_cfg.pretrained
  if setting == REQUIRED and not model_cfg.encoder_from:
    raise PretrainedWeightsError(f'model.pretrained is not set: {WHERE_THE_WEIGHTS_COME_FROM}')
  if setting not in (REQUIRED, FROM_SCRATCH) and not _is_file(setting):
    raise PretrainedWeightsError(
        f'model.pretrained={setting}: no such file; {WHERE_THE_WEIGHTS_COME_FROM}')


def _is_file(path: str) -> bool:
  """Whether `path`, local or on a bucket, is a file."""
  try:
    return epath.Path(path).is_file()
  except ImportError as e:  # gs:// without gcsfs: say what to install, not where it failed
    raise PretrainedWeightsError(f'model.pretrained={path}: {e} '
                                 '(pip install "cct-jax[gcs]")') from e


def weights_file(model_cfg) -> str | None:
  """The file `model.pretrained` names, or None when the trunk starts from scratch; the
  log says which."""
  check_pretrained_config(model_cfg)
  if model_cfg.pretrained in (REQUIRED, FROM_SCRATCH):
    if not model_cfg.encoder_from:
      logging.info("the trunk starts from scratch (model.pretrained='%s')", FROM_SCRATCH)
    return None
  logging.info('the trunk starts from the ImageNet weights in %s', model_cfg.pretrained)
  return model_cfg.pretrained


def load_trunk_weights(trunk_variables: dict, path: str, stem: str | None = None) -> dict:
  """Returns `trunk_variables` ({'params', 'batch_stats'} of the ResNet) filled from `path`.

  Every array of the trunk must be in the file with the same shape, and the file may hold
  nothing else: a partial load would silently train part of the trunk from scratch. The
  template's leaves may be arrays or `jax.ShapeDtypeStruct`s.
  """
  if not _is_file(path):
    raise PretrainedWeightsError(f'{path}: no such file; {WHERE_THE_WEIGHTS_COME_FROM}')
  try:
    # Read whole, in one request (the trunk is ~100 MB), rather than np.load seeking
    # through a bucket's object.
    with np.load(io.BytesIO(epath.Path(path).read_bytes())) as archive:
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


def with_trunk_weights(params: dict, batch_stats: dict, path: str,
                       stem: str | None = None) -> tuple[dict, dict]:
  """`params` and `batch_stats` of any model that holds the trunk at `['encoder']['trunk']`
  (the segmentation models, the classifier of sec. 3.3), with the trunk loaded from `path`
  (see `load_trunk_weights`); every other leaf is left as it is. New trees; the trunk's
  leaves are NumPy arrays, for the caller to place."""
  trunk = {'params': params['encoder']['trunk'],
           'batch_stats': batch_stats['encoder']['trunk']}
  loaded = load_trunk_weights(trunk, path, stem)
  with_trunk = lambda tree, trunk: {**tree, 'encoder': {**tree['encoder'], 'trunk': trunk}}
  return (with_trunk(params, loaded['params']),
          with_trunk(batch_stats, loaded['batch_stats']))
