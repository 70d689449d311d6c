"""The config a run is given against the one its workdir saved (`config.json`).

A run resumed, evaluated or used for prediction with another model than the one its
checkpoints hold would otherwise fail deep inside orbax's restore with a shape or tree
mismatch, or, when the trees happen to agree, quietly compute something else. Fields that
decide what the checkpoint holds therefore stop the run, every difference listed; other
changes (learning rate, steps, batch sizes, evaluation settings, paths) are often meant, and
are listed in one warning.
"""

import json
import re
from typing import Any

from absl import logging
from etils import epath

from cct_jax import errors, methods

SAVED_CONFIG = 'config.json'

PURPOSES = {'resume': 'resume training', 'eval': 'evaluate', 'predict': 'predict'}

# Model fields that only choose the initial weights or the precision of the computation:
# a checkpoint's parameters (float32 in every dtype) restore and mean the same whatever
# they say.
_MODEL_FIELDS_OUTSIDE_THE_CHECKPOINT = frozenset(
    {'model.pretrained', 'model.encoder_from', 'model.dtype', 'model.cpu_conv',
     'model.remat'})
# Fields that change the train state's tree: the mode (auxiliary decoders, Mean Teacher's
# teacher), the optimiser's state, the decoders per class count, the discriminator of the
# adversarial branch, the per-domain batch statistics.
_STATE_FIELDS = frozenset({'train.mode', 'optim.name', 'data.num_classes',
                           'adversarial.enabled', 'domain_batch_stats'})
_DOMAIN_CLASSES = re.compile(r'domains\.[^.]+\.num_classes')


class ConfigDriftError(errors.UserError):
  """The config changes what the workdir's checkpoints hold."""


ABSENT = object()  # a field one of the two configs does not have


def flatten(tree: dict, prefix: str = '') -> dict[str, Any]:
  """{'model': {'width': 8}} -> {'model.width': 8}; lists stay whole values."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def as_saved(config) -> dict[str, Any]:
  """`config` flattened after the JSON round trip `config.json` went through (tuples
  become lists), so that equal settings compare equal."""
  return flatten(json.loads(config.to_json_best_effort()))


def changes_the_checkpoint(field: str, saved: Any, now: Any, current: dict[str, Any]) -> bool:
  """Whether `field` going from `saved` to `now` changes what the checkpoint holds (or what
  its weights compute); `current` is the run's flattened config."""
  if field.startswith('model.'):
    return field not in _MODEL_FIELDS_OUTSIDE_THE_CHECKPOINT
  if field.startswith('perturbations.') and field.endswith('.count'):
    # K auxiliary decoders of the type (perturbations.vat.count: K), in a method with them.
    method = methods.METHODS.get(current.get('train.mode'))
    return method is not None and method.aux_decoders
  positive = lambda value: isinstance(value, (int, float)) and value > 0
  if field == 'optim.momentum':
    # SGD keeps a momentum trace only for a positive momentum.
    return current.get('optim.name') == 'sgd' and positive(saved) != positive(now)
  if field == 'optim.frozen_stages':
    # Frozen stages have a partition of the optimiser's state of their own.
    return positive(saved) != positive(now)
  return field in _STATE_FIELDS or _DOMAIN_CLASSES.fullmatch(field) is not None


def differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  """field -> (saved value, current value) for every field that differs or is in only one."""
  fields = sorted(saved.keys() | current.keys())
  pairs = {field: (saved.get(field, ABSENT), current.get(field, ABSENT)) for field in fields}
  return {field: pair for field, pair in pairs.items() if pair[0] != pair[1]}


def describe(field: str, saved: Any, now: Any, path: str) -> str:
  show = lambda value: 'absent' if value is ABSENT else json.dumps(value)
  where = f'absent from {path}' if saved is ABSENT else f'{show(saved)} in {path}'
  return f'{field}: {where}, {show(now)} now'


def check_against_saved(config, workdir: str, *, purpose: str) -> None:
  """Compares `config` with `<workdir>/config.json`, when there is one.

  `purpose` is 'resume', 'eval' or 'predict'. Raises ConfigDriftError listing every field
  that changes what the checkpoints hold (`model.width: 8 in runs/x/config.json, 16 now`);
  logs one warning listing the other differences.
  """
  if purpose not in PURPOSES:
    raise ValueError(f'purpose must be one of {sorted(PURPOSES)}, got {purpose!r}')
  path = epath.Path(workdir) / SAVED_CONFIG
  if not path.exists():
    return
  saved = flatten(json.loads(path.read_text()))
  current = as_saved(config)
  structural, other = [], []
  for field, (before, now) in differences(saved, current).items():
    line = describe(field, before, now, str(path))
    (structural if changes_the_checkpoint(field, before, now, current) else other).append(line)
  if structural:
    raise ConfigDriftError(
        f'{workdir}: the config given to {PURPOSES[purpose]} changes what its checkpoints '
        'hold:\n  ' + '\n  '.join(structural) +
        '\nPass the saved values (--config.FIELD=VALUE) or use another workdir.')
  if other:
    logging.warning('%s: the config given to %s differs from the saved one in settings the '
                    'checkpoints do not depend on:\n  %s', workdir, PURPOSES[purpose],
                    '\n  '.join(other))
