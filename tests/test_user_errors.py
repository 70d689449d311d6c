"""A user's mistake ends in one `error:` line, exit status 1 and no traceback (issue 37).

The table's commands go through `python -m cct_jax.main`'s own entry point, each in a
child of one process that imported it once (user_errors_driver.py): the nine cases cost
seconds, not seven interpreters' imports.
"""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

import fakes
from cct_jax import checkpointing, config_overrides, defaults, errors, state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(REPO, 'tests', 'user_errors_driver.py')
DEMO = '--config=configs/demo.py:smoke'
VOC_SMOKE = '--config=configs/voc.py:smoke'

# name: (the command's arguments, the first words of its error line); {placeholders} are
# the paths of the `paths` fixture.
CASES = {
    'predict from an empty folder': (
        [DEMO, '--workdir={no_run}', '--mode=predict', '--input={empty}',
         '--output={tmp}/labels'],
        'error: --input={empty}: the folder holds no files to predict'),
    'eval of a --step that is not kept': (
        [DEMO, '--workdir={run}', '--mode=eval', '--step=4'],
        'error: no checkpoint of step 4 in {run}; the steps kept: best/ 2; checkpoints/ 2, 3'),
    'predict with a --step that is not kept': (
        [DEMO, '--workdir={run}', '--mode=predict', '--step=4', '--input={photos}',
         '--output={tmp}/labels'],
        'error: no checkpoint of step 4 in {run}; the steps kept: best/ 2; checkpoints/ 2, 3'),
    'eval in a workdir with no run': (
        [DEMO, '--workdir={no_run}', '--mode=eval'],
        'error: no checkpoint in {no_run} (in best/ or checkpoints/): train first'),
    'a batch that does not divide over the slice': (
        [VOC_SMOKE, '--workdir={tmp}/compile', '--mode=compile',
         '--config.compile.topology=v5e:2x4', '--config.data.batch_size_labelled=4'],
        'error: data.batch_size_labelled=4 does not divide over 8 devices'),
    'a VOC folder smaller than the labelled count': (
        [VOC_SMOKE, '--workdir={tmp}/summary', '--mode=summary', '--config.data.root={voc}',
         '--config.data.num_labelled=1464'],
        'error: data.num_labelled=1464 must be in [1, 6]'),
    'a misspelt override': (
        [DEMO, '--workdir={tmp}/run', '--config.optim.learning_rate=0.1'],
        'error: --config.optim.learning_rate: no such field in configs/demo.py:smoke; '
        'did you mean --config.optim.lr?'),
    'a field in its old place': (
        ['--config=configs/voc.py', '--workdir={tmp}/run', '--config.data.split_dir=lists'],
        'error: --config.data.split_dir: no such field in configs/voc.py; split_dir lives at '
        '--config.data.voc.split_dir'),
    "a field of another dataset's section": (
        [DEMO, '--workdir={tmp}/run', '--config.data.voc.split_dir=lists'],
        'error: --config.data.voc.split_dir: no such field in configs/demo.py:smoke; '
        "split_dir is a field of data.voc for data.name='voc' only"),
}


@pytest.fixture(scope='module')
def paths(tmp_path_factory) -> dict[str, str]:
  """An empty folder, a folder of one photo, a workdir with no run, one keeping steps 2
  (best/) and 2, 3 (checkpoints/) of a stand-in state (nothing restores it), and a VOC
  folder of 6 training images."""
  tmp = tmp_path_factory.mktemp('user_errors')
  run = tmp / 'run_with_checkpoints'
  for name, steps in (('best', (2,)), ('checkpoints', (2, 3))):
    manager = checkpointing.manager(str(run / name))
    for step in steps:
      checkpointing.save(manager, step, {'x': np.zeros(2, np.float32)})
  (tmp / 'empty').mkdir()
  (tmp / 'photos').mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp / 'photos' / 'black.png')
  voc = fakes.write_voc_folder(str(tmp), num_train=4, num_sbd=2, num_val=2)
  return {'tmp': str(tmp), 'run': str(run), 'no_run': str(tmp / 'no_run'),
          'empty': str(tmp / 'empty'), 'photos': str(tmp / 'photos'), 'voc': voc}


@pytest.fixture(scope='module')
def results(paths, tmp_path_factory) -> dict[str, dict]:
  """{case: its returncode, stdout and stderr}, all cases run by one driver process."""
  commands = [[arg.format(**paths) for arg in args] for args, _ in CASES.values()]
  work = tmp_path_factory.mktemp('driver')
  with open(work / 'cases.json', 'w') as f:
    json.dump(commands, f)
  subprocess.run([sys.executable, DRIVER, str(work / 'cases.json'), str(work / 'results.json')],
                 cwd=REPO, check=True, timeout=300)
  with open(work / 'results.json') as f:
    return dict(zip(CASES, json.load(f)))


@pytest.mark.parametrize('case', list(CASES))
def test_a_mistake_ends_in_one_error_line_and_status_1(case, results, paths):
  _, first_words = CASES[case]
  run = results[case]
  error_lines = [line for line in run['stderr'].splitlines() if line.startswith('error:')]
  assert 'Traceback' not in run['stderr'], run['stderr'][-3000:]
  assert run['returncode'] == 1, run['stderr'][-3000:]
  assert len(error_lines) == 1, run['stderr'][-3000:]
  assert error_lines[0].startswith(first_words.format(**paths)), error_lines[0]


def test_every_error_the_entry_point_used_to_list_is_a_user_error():
  """main.py catches UserError alone: the errors it caught by name before are kinds of it,
  and stay the ValueError (or RuntimeError, FileNotFoundError) their callers catch."""
  from cct_jax import compile_report, config_drift, data  # pylint: disable=import-outside-toplevel
  from cct_jax.models import pretrained  # pylint: disable=import-outside-toplevel
  for kind in (config_drift.ConfigDriftError, pretrained.PretrainedWeightsError,
               data.DataError, compile_report.LibtpuMissing, errors.NoCheckpointError):
    assert issubclass(kind, errors.UserError) and issubclass(kind, ValueError), kind
  assert issubclass(compile_report.LibtpuMissing, RuntimeError)
  assert issubclass(errors.NoCheckpointError, FileNotFoundError)


def test_a_kept_step_is_found_where_it_is_kept_and_a_missing_one_is_refused(paths):
  run = paths['run']
  assert state.checkpoint_to_restore(run) == os.path.join(run, 'best')
  assert state.checkpoint_to_restore(run, step=3) == os.path.join(run, 'checkpoints')
  with pytest.raises(errors.NoCheckpointError, match=r'step 7 in .*: best/ 2; checkpoints/ 2, 3'):
    state.checkpoint_to_restore(run, step=7)
  with pytest.raises(errors.NoCheckpointError, match='no checkpoint .of step 2 or any other.'):
    state.checkpoint_to_restore(paths['no_run'], step=2)


@pytest.fixture(scope='module')
def voc_config() -> ml_collections.ConfigDict:
  return defaults.load_config_file(os.path.join(REPO, 'configs', 'voc.py'), '')


# An override -> what the line says after 'no such field in ...; ' (None: a field).
EXPLAINED = {
    '--config.optim.lr=0.1': None,
    '--config.eval.scales[0]=1.0': None,  # an element of a tuple field
    '--config.data={}': None,  # a whole section
    '--config.train.numsteps=10': 'did you mean --config.train.num_steps?',
    '--noconfig.eval.flipp': 'did you mean --config.eval.flip?',
    '--config.optim.learning_rate=0.1': 'did you mean --config.optim.lr?',  # initials
    '--config.optim.lr_multiplier=2': 'did you mean --config.optim.trunk_lr_multiplier?',
    '--config.optm.lr=0.1': 'lr lives at --config.optim.lr',  # a misspelt section
    '--config.perturbation.vat.count=0': 'count lives at --config.perturbations.vat.count',
    '--config.data.tfds_dir=d': "tfds_dir is a field of data.cityscapes for "
                                "data.name='cityscapes' only",
    '--config.optim.zzz=1': 'optim has frozen_stages, lr, momentum, name, poly_power, '
                            'trunk_lr_multiplier, '
                            'weight_decay',
}


@pytest.mark.parametrize('override', list(EXPLAINED))
def test_an_unknown_override_is_told_with_the_field_it_likely_meant(voc_config, override):
  line = config_overrides.check_overrides(voc_config, ['main.py', '--config=voc.py', override],
                                          'voc.py')
  if EXPLAINED[override] is None:
    assert line is None
  else:
    path = override.split('=')[0].split('config.', 1)[1]
    assert line == f'--config.{path}: no such field in voc.py; {EXPLAINED[override]}'


def test_the_config_argument_and_overrides_are_read_as_absl_reads_them():
  argv = ['main', '--config', 'configs/demo.py:smoke', '--config.a.b=1', '-config.c', '--',
          '--config.d=2']
  assert config_overrides.config_argument(argv) == 'configs/demo.py:smoke'
  assert config_overrides.config_argument(['main', '--config=c.py:x']) == 'c.py:x'
  assert config_overrides.override_paths(argv) == ['a.b', 'c']
