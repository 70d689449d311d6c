"""A hang is reported, not waited out (issue 33): the watchdog ends a run that stops making
progress with every thread's stack and one error line; in a two-process run, the loss of
one process ends the other within jax's heartbeat limit, naming it, and the two started
again resume and finish as an uninterrupted run does.

The runs are the demo smoke config from the command line (tests/hang_worker.py stalls
one); the two-process runs are started as tests/test_multihost.py starts them.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from cct_jax import loop, progress, watchdog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANG_WORKER = os.path.join(REPO, 'tests', 'hang_worker.py')


# --------------------------------------------------------------------------------------
# The watchdog in this process, its exit replaced.


@pytest.fixture
def fake_exit():
  """An `exit_process` that records the status; `.fired` is set once it is called."""
  statuses = []
  fired = threading.Event()

  def exit_process(status):
    statuses.append(status)
    fired.set()

  exit_process.statuses, exit_process.fired = statuses, fired
  return exit_process


def test_progress_keeps_the_watchdog_quiet_and_its_absence_fires_it(fake_exit, monkeypatch,
                                                                      capfd):
  dog = watchdog.Watchdog(0.3, stop_grace_s=0.3, resume='the same command resumes',
                          exit_process=fake_exit)
  monkeypatch.setattr(watchdog, '_armed', dog)  # what every Reporter kicks
  reporter = progress.Reporter(10, unit='batches', what='val evaluation')
  for _ in range(3):  # progress for longer than the timeout
    time.sleep(0.15)
    reporter.update()
  assert not fake_exit.fired.is_set()
  assert fake_exit.fired.wait(5)  # then none
  dog.close()
  assert fake_exit.statuses == [watchdog.EXIT_STATUS]
  err = capfd.readouterr().err
  assert 'Thread 0x' in err
  # The main thread's stack: this test, waiting.
  assert 'test_progress_keeps_the_watchdog_quiet_and_its_absence_fires_it' in err
  assert err.splitlines()[-1] == (
      'error: no progress for 0 s (train.hang_timeout_s=0.3): stalled in val evaluation at '
      "3/10 batches; every thread's stack is above. The process exits (status 75) so that the "
      'same command resumes')


def test_after_sigterm_steps_must_follow_within_the_grace(fake_exit, monkeypatch, capfd):
  dog = watchdog.Watchdog(60, stop_grace_s=0.2, resume='it resumes', exit_process=fake_exit)
  monkeypatch.setattr(watchdog, '_armed', dog)
  with loop.StopRequest() as stop:
    signal.raise_signal(signal.SIGTERM)
    for _ in range(5):  # steps towards the stop, for longer than the grace
      time.sleep(0.1)
      stop.agreed(sync=False)
    assert not fake_exit.fired.is_set()
    start = time.monotonic()
    assert fake_exit.fired.wait(5)  # then none: hung
  dog.close()
  assert time.monotonic() - start < 2
  assert ('(SIGTERM asked the run to stop, grace 0.2 s): stalled before any progress was '
          'reported;') in capfd.readouterr().err


def test_armed_watchdog_stops_its_thread_and_zero_arms_none():
  with watchdog.armed(0, resume='') as dog:
    assert dog is None
  with watchdog.armed(60, resume='') as dog:
    assert watchdog._armed is dog  # pylint: disable=protected-access
    with pytest.raises(RuntimeError, match='already armed'):
      with watchdog.armed(60, resume=''):
        pass
  assert watchdog._armed is None  # pylint: disable=protected-access
  assert 'watchdog' not in [thread.name for thread in threading.enumerate()]
  assert signal.set_wakeup_fd(-1) == -1  # given back


# --------------------------------------------------------------------------------------
# A stalled run from the command line.


def test_a_stalled_training_run_exits_with_every_stack_and_one_error_line(tmp_path):
  workdir = tmp_path / 'run'
  result = subprocess.run([sys.executable, HANG_WORKER, '--config=configs/demo.py:smoke',
                           '--config.train.hang_timeout_s=10', f'--workdir={workdir}'],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
  assert result.returncode == watchdog.EXIT_STATUS, result.stderr[-3000:]
  # The stack of the stalled main thread, and the error as the last line.
  assert re.search(r'Thread 0x[0-9a-f]+ \(most recent call first\):\n'
                   r'(  File .*\n)*  File ".*hang_worker.py", line \d+ in stalled_create_state',
                   result.stderr)
  assert re.fullmatch(
      r'error: no progress for 1[0-5] s \(train.hang_timeout_s=10\): stalled before any '
      r"progress was reported; every thread's stack is above. The process exits "
      r'\(status 75\) so that the same command, run again, resumes from the latest checkpoint '
      f'in {re.escape(str(workdir))}', result.stderr.splitlines()[-1])


# --------------------------------------------------------------------------------------
# A process lost in a two-process run.

# Supervised: a train step that compiles in a fraction of CCT's, in each of six processes.
TWO_PROCESS_RUN = ('--config=configs/demo.py:smoke', '--config.train.mode=supervised',
                   '--config.train.num_steps=12', '--config.train.eval_every=0',
                   '--config.train.num_pictures=0')
# The run that loses a process gives jax's heartbeat check 20 s, not a minute: a
# collective that waits for the lost process rather than failing (the train step's
# all-reduce, most often here) ends then.
HEARTBEAT_TIMEOUT_S = 20


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_pair(workdir, logs, *flags):
  """The two processes of TWO_PROCESS_RUN (2 CPU devices each) into `workdir`, each
  writing its log to `logs[i]`."""
  address = f'127.0.0.1:{_free_port()}'
  env = dict(os.environ, JAX_NUM_CPU_DEVICES='2')
  pair = []
  for i, log_path in enumerate(logs):
    with open(log_path, 'w') as log:
      pair.append(subprocess.Popen(
          [sys.executable, '-m', 'cct_jax.main', *TWO_PROCESS_RUN, *flags, f'--workdir={workdir}',
           f'--coordinator_address={address}', '--num_processes=2', f'--process_id={i}'],
          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  return pair


def _finish(processes, timeout=240):
  """Waits for `processes`; their exit statuses."""
  try:
    return [p.wait(timeout=timeout) for p in processes]
  finally:
    _kill(processes)


def _kill(processes):
  """Those of `processes` still running, killed."""
  for p in processes:
    p.kill()
    p.wait()


def _read(path) -> str:
  with open(path) as f:
    return f.read()


def _losses(workdir) -> dict:
  """Step -> loss; a step done again after resuming counts once, its last record."""
  with open(workdir / 'metrics.jsonl') as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def test_a_lost_process_ends_the_other_which_names_it_and_both_resume(tmp_path):
  workdir, reference = tmp_path / 'run', tmp_path / 'uninterrupted'
  logs = [tmp_path / f'process_{i}.log' for i in range(2)]
  # The uninterrupted run beside the one whose process 1 is killed after the first
  # checkpoint (step 2), mid-training.
  uninterrupted = _start_pair(reference, [tmp_path / f'reference_{i}.log' for i in range(2)])
  try:
    pair = _start_pair(workdir, logs, f'--heartbeat_timeout_s={HEARTBEAT_TIMEOUT_S}')
    try:
      while not (workdir / 'checkpoints' / '2').is_dir():
        assert all(p.poll() is None for p in pair), _read(logs[0])[-3000:]
        time.sleep(0.1)
      pair[1].send_signal(signal.SIGKILL)
      killed = time.monotonic()
      (status,) = _finish(pair[:1], timeout=HEARTBEAT_TIMEOUT_S + 30)
      took = time.monotonic() - killed
    finally:
      _kill(pair)
    log = _read(logs[0])
    if status == watchdog.EXIT_STATUS:  # gloo failed an all-gather at once
      last = log.splitlines()[-1]
      assert last.startswith('error: process 1 of 2 is gone (a collective of process 0 '
                             'failed: '), last
      assert last.endswith('so that the same command, run again on every host, resumes '
                           f'from the latest checkpoint in {workdir}')
    else:  # it waited: jax's heartbeat check aborted process 0, naming the lost one
      assert status == -signal.SIGABRT, log[-3000:]
      assert 'The following tasks are unhealthy (stopped sending heartbeats):\n1\n' in log
    assert took < HEARTBEAT_TIMEOUT_S + 10, f'process 0 took {took:.0f} s to stop'

    logs = [tmp_path / f'resumed_{i}.log' for i in range(2)]
    assert _finish(_start_pair(workdir, logs)) == [0, 0], _read(logs[0])[-3000:]
    assert _finish(uninterrupted) == [0, 0], _read(tmp_path / 'reference_0.log')[-3000:]
  finally:
    _kill(uninterrupted)
  assert re.search(r'resumed from step \d+', _read(logs[0]))
  resumed, full = _losses(workdir), _losses(reference)
  assert sorted(resumed) == sorted(full) == list(range(1, 13))
  for step, loss in full.items():
    assert resumed[step] == pytest.approx(loss, rel=1e-6), step
  scores = [json.loads(_read(w / 'results_test.json')) for w in (workdir, reference)]
  assert scores[0]['step'] == 12
  assert scores[0] == scores[1]
