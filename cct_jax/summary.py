"""Parameter counts of the configured network, from shapes alone (`jax.eval_shape`)."""

import json
import math
import os

import jax

from cct_jax import methods, models

GROUPS = ('trunk', 'psp', 'main_decoder', 'aux_decoders')


def count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def parameter_counts(config) -> dict[str, int]:
  """Parameters per part of the network; BN running statistics are not parameters."""
  model, _ = methods.build(config)
  image_shape = (1, 64, 64, 3)  # parameter shapes do not depend on the image size
  variables = jax.eval_shape(lambda key: models.init_variables(model, key, image_shape),
                             jax.random.key(0))
  params = variables['params']
  counts = {
      'trunk': count(params['encoder']['trunk']),
      'psp': count(params['encoder']['psp']),
      'main_decoder': count(params['main_decoder']),
      'aux_decoders': count(params.get('aux_decoders', {})),
  }
  counts['total'] = count(params)
  return counts


def write_summary(config, workdir: str) -> dict[str, int]:
  """Prints the parameter table and writes `workdir/summary.json`."""
  counts = parameter_counts(config)
  rows = [(name, f'{n:,}') for name, n in counts.items()]
  width = max(len(name) for name, _ in rows)
  print(f"{'part':<{width}}  {'parameters':>12}")
  for name, n in rows:
    print(f'{name:<{width}}  {n:>12}')
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'summary.json')
  with open(path, 'w') as f:
    json.dump(counts, f, indent=2)
  print(f'wrote {path}')
  return counts
