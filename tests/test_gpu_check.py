"""benchmarks/gpu_check.sh, the one-call GPU check, on its CPU smoke path: run as on the GPU
machine, where grain, tensorflow-datasets and tensorboardX are not installed."""

import json
import os
import subprocess
import sys
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))

import gpu_check  # pylint: disable=wrong-import-position

ABSENT_ON_THE_GPU = ('grain', 'tensorflow_datasets', 'tensorboardX', 'pydensecrf')


def test_smoke_path_measures_the_step_and_evaluation_without_the_data_libraries(tmp_path):
  blocker = tmp_path / 'site'
  blocker.mkdir()
  # Python imports sitecustomize at start: these packages then fail to import, as there.
  (blocker / 'sitecustomize.py').write_text(
      'import sys\nsys.modules.update(dict.fromkeys(%r))\n' % (ABSENT_ON_THE_GPU,))
  env = dict(os.environ, PYTHONPATH=str(blocker), PYTHON=sys.executable, OUT=str(tmp_path))
  assert subprocess.run([sys.executable, '-c', 'import grain'], env=env,
                        capture_output=True, check=False).returncode != 0
  result = subprocess.run(['bash', os.path.join(REPO, 'benchmarks', 'gpu_check.sh'), '--smoke',
                           '--dtypes=float32'], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(tmp_path / 'gpu_check.json') as f:
    report = json.load(f)
  (row,) = report['rows']
  devices = int(os.environ['JAX_NUM_CPU_DEVICES'])
  assert row['dtype'] == 'float32' and row['devices'] == devices
  assert row['batch'] == f'{devices} + {devices}' and row['num_aux_decoders'] == 1
  assert row['images_per_s'] == pytest.approx(2 * devices / row['step_s'])
  assert row['compile_s'] > 0 and row['model_flops'] > 0 and row['xla_bytes'] > 0
  for per_device in gpu_check.SMOKE['eval_per_device']:
    scored = row[f'eval_{per_device}_per_device']
    assert scored['images'] == per_device * devices
    assert scored['images_per_s'] == pytest.approx(scored['images'] / scored['batch_s'])
  # No datasheet peak for a CPU: no MFU rather than a made-up one.
  assert row['mfu'] is None and 'no datasheet peak' in row['bf16_peak_source']
  assert report['reference'] == {'skipped': 'not in a smoke run'}
  assert '| cct-jax | float32 |' in result.stdout


def test_mfu_uses_the_cards_dense_bf16_peak():
  h200 = types.SimpleNamespace(device_kind='NVIDIA H200')
  assert gpu_check.peak_of(h200)[0] == 989e12
  assert gpu_check.peak_of(types.SimpleNamespace(device_kind='TPU v5 lite'))[0] is None


def test_missing_reference_code_is_reported_not_raised(tmp_path):
  ref = gpu_check.reference(str(tmp_path / 'ref_bench.py'), str(tmp_path / 'CCT'), batch=10,
                            size=320, repeats=1, timeout_s=1)
  assert 'README "On a GPU"' in ref['skipped']
