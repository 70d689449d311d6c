"""`--mode=compile`: the steps compiled by libtpu for a TPU slice that is not here."""

import json
import os
import subprocess
import sys

import jax
import pytest

from cct_jax import compile_report, defaults, perturbations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# One auxiliary decoder (F-Noise) of the smoke config's seven: libtpu compiles the tiny
# model in seconds rather than half a minute; the report's sums are the same for any.
ONE_DECODER = tuple(f'--config.perturbations.{name}.count=0' for name in (
    'vat', 'dropout', 'cutout', 'context_mask', 'object_mask', 'feature_drop'))


def _smoke_config(topology='v5e:2x2'):
  config = defaults.load_config_file(os.path.join(REPO, 'configs', 'voc.py'), 'smoke')
  config.compile.update(topology=topology, eval_canvas=64)
  perturbations.set_counts(config.perturbations, {
      name: int(name == 'feature_noise')
      for name in perturbations.decoder_counts(config.perturbations)})
  return config


def test_the_tiny_model_compiles_for_a_v5e_slice_and_the_report_holds_its_numbers(tmp_path):
  """configs/voc.py:smoke from the command line for v5e:2x2 (4 chips): both steps fit
  with the global batches split over the 4 chips; the JSON holds what the table shows."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  run = subprocess.run(
      [sys.executable, '-m', 'cct_jax.main', '--config=configs/voc.py:smoke',
       f'--workdir={tmp_path}', '--mode=compile', '--config.compile.topology=v5e:2x2',
       '--config.compile.eval_canvas=64', '--compilation_cache=', *ONE_DECODER],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(tmp_path / 'compile_v5e_2x2.json') as f:
    report = json.load(f)
  assert (report['devices'], report['processes'], report['device_kind']) == (
      4, 1, 'TPU v5 lite')
  assert report['hbm_bytes_per_device'] == 16 * 2**30
  config = _smoke_config()
  train, evaluation = report['steps']['train'], report['steps']['eval']
  assert train['images_per_step'] == (config.data.batch_size_labelled
                                      + config.data.batch_size_unlabelled)
  assert evaluation['images_per_step'] == 4 * config.data.eval_batch_size
  for step in (train, evaluation):
    memory = step['memory_bytes']
    assert step['fits'] and 0 < memory['total'] < step['hbm_bytes']
    assert memory['total'] == sum(v for k, v in memory.items() if k != 'total')
    assert step['flops_per_device'] > 0
    assert step['step_bound_s'] == pytest.approx(step['flops_per_device'] / 197e12)
    assert step['images_per_s_bound'] == pytest.approx(
        step['images_per_step'] / step['step_bound_s'])
  # Forward and backward of 2 + 2 crops with the auxiliary decoders per chip against a
  # forward pass of one 64x64 canvas.
  assert train['flops_per_device'] > evaluation['flops_per_device']
  assert '| train | 8 | yes |' in run.stdout and 'wrote' in run.stdout


def test_a_batch_far_too_large_for_the_chip_is_reported_as_not_fitting():
  """256 images of 512x512 per chip: the report says no, with the numbers, and raises
  nothing."""
  config = _smoke_config()
  config.data.update(crop_size=512, batch_size_labelled=1024, batch_size_unlabelled=1024)
  report = compile_report.compile_for_topology(config)
  train = report['steps']['train']
  assert not train['fits']
  text = compile_report.format_report(report)
  assert 'train step does not fit' in text and 'GB' in text


def test_a_global_batch_that_does_not_divide_over_the_slice_is_refused_by_name():
  config = _smoke_config()
  config.data.batch_size_labelled = 6
  with pytest.raises(ValueError, match='data.batch_size_labelled=6 does not divide over 4'):
    compile_report.compile_for_topology(config)


def test_an_unknown_chip_kind_is_refused_with_the_kinds_known():
  with pytest.raises(ValueError, match="chip kind must be one of .*'v5e'"):
    compile_report.compile_for_topology(_smoke_config('v3:2x2'))


@pytest.mark.parametrize('requires, install', [
    (['numpy>=2.2', 'libtpu==0.0.53.*; extra == "tpu"', 'requests; extra == "tpu"'],
     "`pip install 'libtpu==0.0.53.*'`, the release that pairs with jax "),
    (['numpy>=2.2', 'libtpu-nightly; extra == "tpu"'],
     'needs libtpu: the release that pairs with jax '),
])
def test_without_libtpu_the_message_names_the_release_jax_pairs_with(
    monkeypatch, requires, install):
  """The pairing is read from jax's metadata (its `tpu` extra); without one, a plain
  message."""
  monkeypatch.delenv('TPU_LIBRARY_PATH', raising=False)
  monkeypatch.setattr(compile_report.importlib.util, 'find_spec', lambda name: None)
  monkeypatch.setattr(compile_report.importlib.metadata, 'requires',
                      lambda name: requires if name == 'jax' else [])
  with pytest.raises(compile_report.LibtpuMissing) as error:
    compile_report.topology_devices('v5e:2x2')
  assert install + jax.__version__ in str(error.value)
