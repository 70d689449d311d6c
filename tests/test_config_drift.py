"""A run's config against the workdir's saved config.json (issue 27): changes to what the
checkpoints hold stop the run with every difference listed; other changes are one warning."""

import logging
import os

import pytest

from cct_jax import config_drift, defaults, writers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo(arg='smoke'):
  return defaults.load_config_file(os.path.join(REPO, 'configs', 'demo.py'), arg)


def _two_domains():
  return defaults.load_config_file(os.path.join(REPO, 'configs', 'demo_two_domains.py'),
                                   'smoke')


def _save(config, workdir) -> str:
  """config.json as a training run writes it."""
  writer = writers.MetricWriter(str(workdir))
  writer.write_config(config)
  writer.close()
  return str(workdir / 'config.json')


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def capture_warnings(caplog):
  caplog.set_level(logging.WARNING)
  return caplog


def test_no_saved_config_or_the_same_config_passes_silently(tmp_path, capture_warnings):
  config = _demo()
  config_drift.check_against_saved(config, str(tmp_path), purpose='resume')
  _save(config, tmp_path)
  for purpose in ('resume', 'eval', 'predict'):
    config_drift.check_against_saved(_demo(), str(tmp_path), purpose=purpose)
  assert not _warnings(capture_warnings)


def test_changes_to_what_the_checkpoint_holds_stop_with_every_difference(tmp_path,
                                                                          capture_warnings):
  path = _save(_demo(), tmp_path)
  config = _demo()
  config.model.width = 16
  config.model.decoder_final_relu = True
  config.perturbations.vat.count = 2
  config.optim.lr = 0.05  # not a reason to stop; not in the error either
  with pytest.raises(config_drift.ConfigDriftError) as error:
    config_drift.check_against_saved(config, str(tmp_path), purpose='eval')
  message = str(error.value)
  assert message.startswith(f'{tmp_path}: the config given to evaluate changes what its '
                            'checkpoints hold:')
  assert message.splitlines()[1:4] == [
      f'  model.decoder_final_relu: false in {path}, true now',
      f'  model.width: 8 in {path}, 16 now',
      f'  perturbations.vat.count: 1 in {path}, 2 now']
  assert 'optim.lr' not in message
  assert not _warnings(capture_warnings)


@pytest.mark.parametrize('field, value', [
    ('train.mode', 'supervised'),     # no auxiliary decoders
    ('optim.name', 'adamw'),          # another optimiser state
    ('optim.momentum', 0.0),          # SGD without a momentum trace
    ('optim.frozen_stages', 2),       # a partition of the optimiser state for them
    ('model.num_classes', 6),
    ('data.num_classes', 6),
])
def test_each_state_changing_field_is_an_error(tmp_path, field, value):
  path = _save(_demo(), tmp_path)
  config = _demo()
  section, name = field.split('.')
  before = config[section][name]
  config[section][name] = value
  with pytest.raises(config_drift.ConfigDriftError, match='given to resume training') as error:
    config_drift.check_against_saved(config, str(tmp_path), purpose='resume')
  assert config_drift.describe(field, before, value, path) in str(error.value)


def test_other_changes_are_one_warning_listing_them(tmp_path, capture_warnings):
  saved = _demo()
  path = _save(saved, tmp_path)
  config = _demo()
  config.optim.lr = 0.02
  config.optim.momentum = 0.5  # still positive: the same optimiser state
  config.train.num_steps = 100
  config.data.batch_size_labelled = 8
  config.data.root = '/data/tex5'
  config.eval.scales = (0.5, 1.0)
  config.model.dtype = 'bfloat16'
  config.model.pretrained = 'resnet50_deep.npz'
  config_drift.check_against_saved(config, str(tmp_path), purpose='resume')
  [warning] = _warnings(capture_warnings)
  assert warning.splitlines() == [
      f'{tmp_path}: the config given to resume training differs from the saved one in '
      'settings the checkpoints do not depend on:',
      f'  data.batch_size_labelled: 4 in {path}, 8 now',
      f'  data.root: "" in {path}, "/data/tex5" now',
      f'  eval.scales: [1.0] in {path}, [0.5, 1.0] now',
      f'  model.dtype: "float32" in {path}, "bfloat16" now',
      f'  model.pretrained: "{saved.model.pretrained}" in {path}, "resnet50_deep.npz" now',
      f'  optim.lr: 0.1 in {path}, 0.02 now',
      f'  optim.momentum: 0.9 in {path}, 0.5 now',
      f'  train.num_steps: 4 in {path}, 100 now']


def test_perturbation_counts_matter_only_where_there_are_auxiliary_decoders(tmp_path,
                                                                           capture_warnings):
  supervised = _demo()
  supervised.train.mode = 'supervised'
  _save(supervised, tmp_path)
  supervised.perturbations.vat.count = 3
  config_drift.check_against_saved(supervised, str(tmp_path), purpose='predict')
  [warning] = _warnings(capture_warnings)
  assert 'perturbations.vat.count: 1 in' in warning


def test_domains_their_classes_and_the_adversarial_branch_are_part_of_the_checkpoint(
    tmp_path):
  path = _save(_two_domains(), tmp_path)
  config = _two_domains()
  config.domains.fashion5.num_classes = 11
  config.adversarial.enabled = True
  config.domain_batch_stats = True
  config.domains.sun = config.domains.tex5  # a third domain: its decoders are new
  with pytest.raises(config_drift.ConfigDriftError) as error:
    config_drift.check_against_saved(config, str(tmp_path), purpose='resume')
  lines = str(error.value).splitlines()
  for expected in (f'  adversarial.enabled: false in {path}, true now',
                   f'  domain_batch_stats: false in {path}, true now',
                   f'  domains.fashion5.num_classes: 5 in {path}, 11 now',
                   f'  domains.sun.num_classes: absent from {path}, 5 now'):
    assert expected in lines

  # A single-domain config in a two-domain workdir.
  with pytest.raises(config_drift.ConfigDriftError) as error:
    config_drift.check_against_saved(_demo(), str(tmp_path), purpose='eval')
  lines = str(error.value).splitlines()
  assert f'  data.num_classes: absent from {path}, 5 now' in lines
  assert f'  domains.tex5.num_classes: 5 in {path}, absent now' in lines


def test_unknown_purpose_is_refused(tmp_path):
  with pytest.raises(ValueError, match='purpose must be one of'):
    config_drift.check_against_saved(_demo(), str(tmp_path), purpose='train')
