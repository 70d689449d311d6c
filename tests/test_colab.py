"""launch/colab.ipynb (issues 8, 27) executes end to end (nbclient, a Python kernel of
this environment) on the demo smoke config, chosen by the notebook's CCT_NOTEBOOK_CONFIG,
and trains only through the library's functions. Its install cell clones and installs
cct-jax into a fresh environment (one made here, without cct-jax), and picks the jax build
for every kind of Colab runtime."""

import fnmatch
import glob
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'launch', 'colab.ipynb')
PLACEHOLDER = 'YOUR-GITHUB-USER'


def _code(notebook) -> str:
  return '\n'.join(c.source for c in notebook.cells if c.cell_type == 'code')


def _install_cell() -> str:
  [cell] = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells
            if c.source.startswith('# Install')]
  return cell


def _cells_before_training() -> str:
  """The code cells up to the one that imports the library: install, run settings, config."""
  cells = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells
           if c.cell_type == 'code']
  last = next(i for i, source in enumerate(cells) if 'from cct_jax import' in source)
  return '\n'.join(cells[:last + 1])


def test_notebook_calls_the_library_and_defaults_to_the_full_demo():
  code = _code(nbformat.read(NOTEBOOK, as_version=4))
  for call in ('train.train_and_evaluate(', 'train.evaluate_checkpoint(', 'metrics.jsonl',
               'predictions_test.png', 'mark_as_parsed()'):
    assert call in code
  for training_code in ('optax', 'jax.jit', 'jax.grad', 'apply_gradients', 'make_train_step'):
    assert training_code not in code
  assert "os.environ.get('CCT_NOTEBOOK_CONFIG', 'configs/demo.py')" in code


def test_notebook_has_an_open_in_colab_badge_and_one_repository_placeholder():
  intro = nbformat.read(NOTEBOOK, as_version=4).cells[0].source
  badge = ('[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]'
           f'(https://colab.research.google.com/github/{PLACEHOLDER}/cct-jax/blob/main/'
           'launch/colab.ipynb)')
  assert badge in intro and f'replace `{PLACEHOLDER}`' in intro
  assert (f"REPO_URL = os.environ.get('CCT_JAX_REPO', 'https://github.com/{PLACEHOLDER}/"
          "cct-jax.git')") in _install_cell()


@pytest.mark.parametrize('devices, environment, gpu, expected', [
    ([], {}, False, []),                                            # CPU runtime
    (['/dev/nvidia0'], {}, True, ['jax[cuda12]>=0.11,<0.13']),      # GPU runtime
    (['/dev/accel0', '/dev/accel1'], {}, False, ['jax[tpu]>=0.11,<0.13']),   # TPU VM v2-v4
    (['/dev/vfio/vfio', '/dev/vfio/0'], {}, False, ['jax[tpu]>=0.11,<0.13']),  # v5e / v6e
    (['/dev/vfio/vfio'], {}, False, []),           # the VFIO control node alone: no chip
    ([], {'COLAB_TPU_ADDR': '10.0.0.2:8470'}, False, ['jax[tpu]>=0.11,<0.13']),  # TPU node
    ([], {'TPU_ACCELERATOR_TYPE': 'v6e-1'}, False, ['jax[tpu]>=0.11,<0.13']),
])
def test_install_cell_installs_the_jax_of_the_runtime(monkeypatch, devices, environment, gpu,
                                                     expected):
  """The cell's own code, with the runtime's devices, environment, and pip stood in for."""
  for name in ('COLAB_TPU_ADDR', 'TPU_ACCELERATOR_TYPE', 'TPU_NAME'):
    monkeypatch.delenv(name, raising=False)
  for name, value in environment.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setattr(glob, 'glob', lambda pattern: fnmatch.filter(devices, pattern))
  monkeypatch.setattr(shutil, 'which', lambda name: f'/usr/bin/{name}' if gpu else None)
  for installed in (False, True):
    pip = []
    monkeypatch.setattr(subprocess, 'run', lambda command, **_: pip.append(command))
    monkeypatch.setattr(importlib.metadata, 'distributions',
                        lambda **_: iter([object()] if installed else []))
    monkeypatch.chdir(REPO)  # a checkout: nothing to clone
    exec(compile(_install_cell(), 'install cell', 'exec'), {})  # pylint: disable=exec-used
    assert pip == ([] if installed else
                   [[sys.executable, '-m', 'pip', 'install', '--quiet', '.', *expected]])


def _environment_without_cct_jax(root) -> str:
  """A fresh virtual environment whose only packages are this one's, minus cct-jax: every
  dependency is there (pip installs none), the cct-jax distribution is not. Returns its
  Python."""
  site_packages = sysconfig.get_paths()['purelib']
  dependencies = root / 'dependencies'
  dependencies.mkdir()
  for name in os.listdir(site_packages):
    if not (name.startswith(('cct_jax', '__editable__')) or name == '__pycache__'):
      (dependencies / name).symlink_to(os.path.join(site_packages, name))
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', root / 'env'], check=True)
  python = root / 'env' / 'bin' / 'python'
  fresh_site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()'
                               '["purelib"])'], capture_output=True, text=True,
                              check=True).stdout.strip()
  with open(os.path.join(fresh_site, 'dependencies.pth'), 'w') as f:
    f.write(f'import site; site.addsitedir({str(dependencies)!r})\n')
  return str(python)


def _repository_of_this_checkout(root) -> str:
  """A git repository of the checkout's working tree (what a user clones). Returns its URL."""
  origin = root / 'origin'
  origin.mkdir()
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(REPO, name), origin / name)
  for name in ('cct_jax', 'configs'):
    shutil.copytree(os.path.join(REPO, name), origin / name,
                    ignore=shutil.ignore_patterns('__pycache__'))
  # What a pip run that failed in the checkout leaves: cct-jax's metadata, on sys.path as
  # the current folder. It must not pass for an installed cct-jax.
  (origin / 'cct_jax.egg-info').mkdir()
  (origin / 'cct_jax.egg-info' / 'PKG-INFO').write_text(
      'Metadata-Version: 2.1\nName: cct-jax\nVersion: 0.1.0\n')
  git = ['git', '-C', str(origin), '-c', 'user.name=test', '-c', 'user.email=test@example.com']
  for command in (['init', '--quiet'], ['add', '--all'], ['commit', '--quiet', '-m', 'cct-jax']):
    subprocess.run(git + command, check=True)
  return f'file://{origin}'


def test_install_cell_clones_and_installs_cct_jax_into_a_fresh_environment(tmp_path):
  """Colab's case: a Python without cct-jax, in an empty folder. The cell must clone, see
  that cct-jax is not installed although the clone imports, and pip-install it; then the
  notebook's next cells find the library. pip works offline here: every dependency is
  installed already, and the build uses this environment's setuptools."""
  python = _environment_without_cct_jax(tmp_path)
  check = [python, '-c', 'import importlib.metadata as m; print(m.version("cct-jax"))']
  assert subprocess.run(check, cwd=tmp_path, capture_output=True, text=True).returncode != 0
  content = tmp_path / 'content'  # Colab's working folder
  content.mkdir()
  tools = tmp_path / 'bin'  # git and nothing else: no nvidia-smi, whatever this machine has
  tools.mkdir()
  (tools / 'git').symlink_to(shutil.which('git'))
  env = dict(os.environ, PATH=str(tools), CCT_JAX_REPO=_repository_of_this_checkout(tmp_path),
             CCT_NOTEBOOK_CONFIG='configs/demo.py:smoke', PIP_NO_INDEX='1',
             PIP_NO_BUILD_ISOLATION='0', PIP_NO_CACHE_DIR='1',
             PIP_DISABLE_PIP_VERSION_CHECK='1')
  env.pop('PYTHONPATH', None)
  result = subprocess.run([python, '-c', _cells_before_training()], cwd=content, env=env,
                          capture_output=True, text=True, timeout=240)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'installed cct-jax\n' in result.stdout  # and no accelerator build of jax
  assert f'cct-jax in {content / "cct-jax"}\n' in result.stdout
  assert 'configs/demo.py:smoke: 4 steps' in result.stdout  # the config cell ran
  # Installed into the fresh environment: found from any folder.
  assert subprocess.run(check, capture_output=True, text=True, cwd=tmp_path,
                        check=True).stdout == '0.1.0\n'

  # Run again (Runtime > Run all, a second time): nothing to clone or install.
  again = subprocess.run([python, '-c', _install_cell()], cwd=content, env=env,
                         capture_output=True, text=True, timeout=60)
  assert again.returncode == 0, again.stderr
  assert again.stdout == f'cct-jax is installed already\ncct-jax in {content / "cct-jax"}\n'


def test_install_cell_outside_a_checkout_asks_for_the_repository_url(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'CCT_JAX_REPO'}
  result = subprocess.run([sys.executable, '-c', _install_cell()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode != 0
  assert f'replace {PLACEHOLDER} in REPO_URL' in result.stderr


def test_notebook_runs_the_smoke_demo(tmp_path, monkeypatch):
  workdir = tmp_path / 'colab'
  # The kernel inherits the environment (tests/conftest.py's devices, compile cache too).
  monkeypatch.setenv('CCT_NOTEBOOK_CONFIG', 'configs/demo.py:smoke')
  monkeypatch.setenv('CCT_NOTEBOOK_WORKDIR', str(workdir))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(notebook, timeout=240, kernel_name='python3',
                          resources={'metadata': {'path': REPO}})
  client.execute()  # raises CellExecutionError on the first failing cell

  outputs = [o for c in notebook.cells if c.cell_type == 'code' for o in c.outputs]
  text = ''.join(o.get('text', '') for o in outputs)
  assert 'configs/demo.py:smoke: 4 steps' in text
  assert 'test mIoU' in text
  pictures = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert pictures, 'predictions_test.png was not shown'
  assert (workdir / 'eval_test.json').is_file() and (workdir / 'eval_val.json').is_file()
  with open(workdir / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert [r['step'] for r in records if 'loss' in r] == [1, 2, 3, 4]
  evaluations = [r for r in records if 'val/miou' in r]
  assert [r['step'] for r in evaluations] == [2, 4]
  # Test scores come from the checkpoint best on val (the earlier one on a tie).
  best = max(evaluations, key=lambda r: (r['val/miou'], -r['step']))
  with open(workdir / 'results_test.json') as f:
    assert json.load(f)['step'] == best['step']
