"""launch/colab.ipynb (issue 8) executes end to end (nbclient, a Python kernel of this
environment) on the demo smoke config, chosen by the notebook's CCT_NOTEBOOK_CONFIG, and
trains only through the library's functions."""

import json
import os

import nbformat
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'launch', 'colab.ipynb')


def _code(notebook) -> str:
  return '\n'.join(c.source for c in notebook.cells if c.cell_type == 'code')


def test_notebook_calls_the_library_and_defaults_to_the_full_demo():
  code = _code(nbformat.read(NOTEBOOK, as_version=4))
  for call in ('train.train_and_evaluate(', 'train.evaluate_checkpoint(', 'metrics.jsonl',
               'predictions_test.png', 'mark_as_parsed()'):
    assert call in code
  for training_code in ('optax', 'jax.jit', 'jax.grad', 'apply_gradients', 'make_train_step'):
    assert training_code not in code
  assert "os.environ.get('CCT_NOTEBOOK_CONFIG', 'configs/demo.py')" in code


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
