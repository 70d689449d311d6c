"""`--config.<field>=value` overrides of fields a config does not have, told in one line.

ml_collections refuses such an override while absl parses the flags, before `main` runs,
with a traceback ending in `AttributeError: "'learning_rate'"`. The line here says which
field was meant instead:

  - a field that moved, or an override that misspells a section, keeps the field's last
    name: `data.split_dir` lives at `data.voc.split_dir` now;
  - a field of another dataset's section (`data.voc.split_dir` in a tex5 config) is named
    with the dataset it belongs to;
  - a misspelt or abbreviated name is a near neighbour (difflib's ratio) or the initials
    of the words of the one meant (`learning_rate` for `lr`);
  - otherwise the fields of the section the path reaches are listed.
"""

import difflib
import re
from collections.abc import Sequence

import ml_collections

from cct_jax.data import factory as data_factory

# difflib's ratio from which a field counts as a likely misspelling of another; fields
# further than TIE below the closest one are not suggested beside it.
CLOSE = 0.6
TIE = 0.1
MAX_SUGGESTIONS = 3


def config_argument(argv: Sequence[str], flag: str = 'config') -> str | None:
  """The value of `--config=PATH[:ARG]` (or `--config PATH`) in `argv`, else None."""
  for k, arg in enumerate(argv):
    if arg == '--':
      break
    match = re.match(rf'^--?{flag}(=(.*))?$', arg)
    if match:
      if match.group(1) is not None:
        return match.group(2)
      return argv[k + 1] if k + 1 < len(argv) else None
  return None


def override_paths(argv: Sequence[str], flag: str = 'config') -> list[str]:
  """The field paths that `--config.<path>[=value]` (or `--noconfig.<path>`, for booleans)
  arguments of `argv` override, each once, in order."""
  paths = []
  for arg in argv:
    if arg == '--':  # what follows is not a flag
      break
    match = re.match(rf'^--?(?:no)?{flag}\.([^=]+)', arg)
    if match and match.group(1) not in paths:
      paths.append(match.group(1))
  return paths


def _is_section(value) -> bool:
  return isinstance(value, (ml_collections.ConfigDict, dict))


def field_paths(config, prefix: str = '') -> list[str]:
  """Every field of `config` as a dotted path; a section comes before its own fields."""
  paths = []
  for name, value in config.items():
    paths.append(prefix + name)
    if _is_section(value):
      paths += field_paths(value, f'{prefix}{name}.')
  return paths


def _names(path: str) -> list[str]:
  # An element of a tuple field (`field[0]`, which ml_collections accepts) is its field's.
  return [name.split('[')[0] for name in path.split('.')]


def deepest_section(config, path: str) -> tuple[str, object]:
  """The longest prefix of `path` that is a section of `config`, and that section."""
  node, reached = config, []
  for name in _names(path):
    if not (_is_section(node) and name in node and _is_section(node[name])):
      break
    node = node[name]
    reached.append(name)
  return '.'.join(reached), node


def is_field(config, path: str) -> bool:
  section, node = deepest_section(config, path)
  rest = _names(path)[len(section.split('.')) if section else 0:]
  return not rest or (len(rest) == 1 and rest[0] in node)


def initials(name: str) -> str:
  """'learning_rate' -> 'lr': the short names configs give to long ones."""
  return ''.join(word[0] for word in name.split('_') if word)


def closeness(path: str, candidate: str) -> float:
  """How likely `candidate` is the field an override of `path` meant, in [0, 1]. In the
  same section: 1 for an abbreviation (either way round), else difflib's ratio of the two
  names (their shared section would make any two look alike). Elsewhere: the ratio of the
  two paths."""
  *parent, name = _names(path)
  *candidate_parent, candidate_name = _names(candidate)
  if parent != candidate_parent:
    return difflib.SequenceMatcher(None, path, candidate).ratio()
  if '_' in name + candidate_name and (
      initials(name) == candidate_name or initials(candidate_name) == name):
    return 1.0
  return difflib.SequenceMatcher(None, name, candidate_name).ratio()


def closest(path: str, candidates: Sequence[str], cutoff: float = 0.0) -> list[str]:
  """The candidates nearly as close to `path` as the closest one, and at least `cutoff`
  close, closest first."""
  scores = {candidate: closeness(path, candidate) for candidate in candidates}
  ranked = sorted(candidates, key=lambda candidate: -scores[candidate])
  if not ranked:
    return []
  floor = max(cutoff, scores[ranked[0]] - TIE)
  return [candidate for candidate in ranked if scores[candidate] >= floor][:MAX_SUGGESTIONS]


def _either(options: Sequence[str]) -> str:
  return options[0] if len(options) == 1 else f'{", ".join(options[:-1])} or {options[-1]}'


def other_datasets_with(name: str) -> dict[str, list[str]]:
  """{'data.<section>': the datasets whose own data section has a field `name`}."""
  homes = {}
  for dataset, registered in sorted(data_factory.DATASETS.items()):
    if registered.section and name in registered.section_defaults:
      homes.setdefault(f'data.{registered.section}', []).append(repr(dataset))
  return homes


def explain_unknown(config, path: str) -> str:
  """Why `--config.<path>` names no field of `config`, and which field it likely meant."""
  name = _names(path)[-1]
  fields = field_paths(config)
  # A moved field (or a misspelt section above it) keeps its last name.
  same_name = [field for field in fields if _names(field)[-1] == name]
  if same_name:
    homes = closest(path, same_name)
    return f'{name} lives at {_either([f"--config.{home}" for home in homes])}'
  # A field of a dataset's own section, which this config's dataset does not have.
  elsewhere = other_datasets_with(name)
  if elsewhere:
    return _either([f'{name} is a field of {section} for data.name={_either(datasets)} only'
                    for section, datasets in elsewhere.items()])
  # Sections above the path are not what a misspelt field meant.
  candidates = [field for field in fields if not path.startswith(field + '.')]
  close = closest(path, candidates, cutoff=CLOSE)
  if close:
    return f'did you mean {_either([f"--config.{field}" for field in close])}?'
  section, node = deepest_section(config, path)
  return f'{section or "the config"} has {", ".join(sorted(node.keys()))}'


def check_overrides(config, argv: Sequence[str], source: str = 'the config') -> str | None:
  """One line for the overrides in `argv` of fields `config` (loaded from `source`) lacks,
  each with the field it likely meant; None when every override names a field."""
  unknown = [path for path in override_paths(argv) if not is_field(config, path)]
  if not unknown:
    return None
  return '; '.join(f'--config.{path}: no such field in {source}; '
                   f'{explain_unknown(config, path)}' for path in unknown)
