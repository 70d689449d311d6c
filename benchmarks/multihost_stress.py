"""Two processes, again and again: counts hangs, failures and mismatched scores.

Runs `python -m cct_jax.main --config=configs/voc.py:smoke` as two processes of 2 CPU
devices each (jax.distributed, gloo collectives) on a VOC-layout folder whose images all
differ in size, `--runs` times in a row, with the other core kept busy by a spinning
process, and compares each run's val scores with those of one process of 4 devices on the
same data. A run that has not finished after `--timeout_s` is a hang: both processes are
killed and the last line of process 0's log is kept.

All runs share one warm persistent compilation cache, as the test suite's runs do: the
condition in which jax 0.12.1 deadlocked (README, "Several processes"). Prints a table
and writes benchmarks/results/multihost_stress.json.

  python benchmarks/multihost_stress.py [--runs=10] [--timeout_s=240]
"""

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

import jax
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
import fakes  # pylint: disable=wrong-import-position

_RUNS = flags.DEFINE_integer('runs', 10, 'Two-process runs.')
_TIMEOUT = flags.DEFINE_integer('timeout_s', 240, 'Seconds after which a run is a hang.')
_BUSY = flags.DEFINE_bool('busy', True, 'Keep the other core busy during the runs.')
_OUT = flags.DEFINE_string('out', os.path.join(os.path.dirname(__file__), 'results',
                                               'multihost_stress.json'), 'JSON output.')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Pixel accuracy (a fraction) of one process of 4 devices and of two processes agree up to the pixels
# on which the models, equal up to rounding, nearly tie (tests/test_multihost.py).
TOLERANCE = 0.01


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _config_args(voc_root: str) -> list[str]:
  return ['--config=configs/voc.py:smoke', f'--config.data.root={voc_root}',
          '--config.data.num_labelled=6', '--config.train.num_steps=2',
          '--config.train.log_every=1', '--config.train.checkpoint_every=1']


def _environment(devices: int, cache: str) -> dict:
  # The test suite's settings (tests/conftest.py): cheap compiles, one thread per device.
  return dict(os.environ, JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES=str(devices),
              JAX_DISABLE_MOST_OPTIMIZATIONS='1', CCT_COMPILATION_CACHE=cache,
              XLA_FLAGS='--xla_cpu_multi_thread_eigen=false')


def _run(args_per_process: list[list[str]], devices: int, cache: str, log_dir: str,
         timeout_s: int) -> tuple[str, float]:
  """('ok' | 'hang' | 'failed (exit N)', seconds) of one run of one or more processes."""
  start = time.perf_counter()
  processes = []
  for index, args in enumerate(args_per_process):
    with open(os.path.join(log_dir, f'process_{index}.log'), 'w') as log:
      processes.append(subprocess.Popen(
          [sys.executable, '-m', 'cct_jax.main', *args], cwd=REPO,
          env=_environment(devices, cache), stdout=log, stderr=subprocess.STDOUT))
  outcome = 'ok'
  for process in processes:
    try:
      process.wait(timeout=max(1.0, timeout_s - (time.perf_counter() - start)))
    except subprocess.TimeoutExpired:
      outcome = 'hang'
      for p in processes:
        p.kill()
        p.wait()
      break
    if process.returncode and outcome == 'ok':
      outcome = f'failed (exit {process.returncode})'
  for process in processes:  # a process that failed leaves the others waiting for it
    if process.poll() is None:
      process.kill()
      process.wait()
  return outcome, time.perf_counter() - start


def _last_line(log_dir: str) -> str:
  with open(os.path.join(log_dir, 'process_0.log')) as f:
    lines = [line.strip() for line in f if line.strip() and not line.startswith('[Gloo]')]
  return lines[-1][-160:] if lines else ''


def _pixel_accuracy(workdir: str) -> float | None:
  path = os.path.join(workdir, 'results_val.json')
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)['pixel_accuracy']


def main(argv):
  del argv
  root = tempfile.mkdtemp(prefix='multihost_stress_')
  voc_root = fakes.write_voc_folder(os.path.join(root, 'data'), num_train=6, num_val=9,
                                    num_sbd=10)
  cache = os.path.join(root, 'xla_cache')
  config = _config_args(voc_root)

  busy = (subprocess.Popen([sys.executable, '-c', 'while True: pass'])
          if _BUSY.value else None)
  try:
    reference_dir = os.path.join(root, 'one_process')
    os.makedirs(reference_dir)
    outcome, seconds = _run([[*config, f'--workdir={reference_dir}/w']], 4, cache,
                            reference_dir, _TIMEOUT.value)
    if outcome != 'ok':
      sys.exit(f'error: the one-process reference run {outcome}; log: {reference_dir}')
    reference = _pixel_accuracy(os.path.join(reference_dir, 'w'))
    print(f'one process of 4 devices: val pixel accuracy {100 * reference:.2f}% ({seconds:.0f} s)')
    print('| run | outcome | seconds | val pixel accuracy | matches | last line of process 0 |')
    print('|---|---|---|---|---|---|')
    records = []
    for run in range(1, _RUNS.value + 1):
      run_dir = os.path.join(root, f'run_{run}')
      os.makedirs(run_dir)
      address = f'127.0.0.1:{_free_port()}'
      outcome, seconds = _run(
          [[*config, f'--workdir={run_dir}/w', f'--coordinator_address={address}',
            '--num_processes=2', f'--process_id={index}'] for index in range(2)],
          2, cache, run_dir, _TIMEOUT.value)
      accuracy = _pixel_accuracy(os.path.join(run_dir, 'w')) if outcome == 'ok' else None
      matches = accuracy is not None and abs(accuracy - reference) <= TOLERANCE
      records.append(dict(run=run, outcome=outcome, seconds=round(seconds, 1),
                          pixel_accuracy=accuracy, matches=matches,
                          last_line=_last_line(run_dir)))
      shown = f'{100 * accuracy:.2f}%' if accuracy is not None else '-'
      print(f'| {run} | {outcome} | {seconds:.0f} | {shown} | {"yes" if matches else "no"} '
            f'| {records[-1]["last_line"] if outcome != "ok" else ""} |', flush=True)
  finally:
    if busy is not None:
      busy.kill()

  summary = dict(runs=len(records), hangs=sum(r['outcome'] == 'hang' for r in records),
                 failures=sum(r['outcome'].startswith('failed') for r in records),
                 mismatches=sum(r['outcome'] == 'ok' and not r['matches'] for r in records))
  print(f'{summary["runs"]} runs: {summary["hangs"]} hangs, {summary["failures"]} failures, '
        f'{summary["mismatches"]} mismatched scores; logs in {root}')
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(dict(summary, jax=jax.__version__, python=platform.python_version(),
                   cpus=os.cpu_count(), busy_core=_BUSY.value, timeout_s=_TIMEOUT.value,
                   reference_pixel_accuracy=reference, records=records), f, indent=1)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
