"""The trainer (paper sec. 3.2 and 4.1): data-parallel equivalence, stop and resume, fail fast on
NaN, and the command line end to end (train, eval, predict, summary, a config typo).

The in-process runs and the command-line subprocesses all train the same demo smoke model,
so the session's compilation cache (tests/conftest.py) compiles it once.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys

import jax
import ml_collections
import jax.extend
import numpy as np
import pytest
from jax.sharding import AxisType
from PIL import Image

import fakes
from cct_jax import (checkpointing, defaults, loop, methods, models, parallel, perturbations,
                     train, train_step)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    'profile_top_ops', os.path.join(REPO, 'tools', 'profile_top_ops.py'))
profile_top_ops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(profile_top_ops)


def _demo_config(arg: str = 'smoke'):
  return defaults.load_config_file(os.path.join(REPO, 'configs', 'demo.py'), arg)


def _abstract_state(config, num_steps: int):
  """A restore target for `config`'s train state, from shapes alone."""
  model, method = methods.build(config)
  mesh = parallel.data_mesh()
  shapes = jax.eval_shape(lambda: train_step.create_train_state(config, model, method, num_steps, mesh))
  return checkpointing.abstract_with_sharding(shapes, parallel.replicated(mesh))


def _restore_latest(directory: str, abstract_state):
  return checkpointing.restore(checkpointing.manager(directory), abstract_state)


def _assert_trees_close(actual, expected, rtol, atol, what):
  flat_actual = jax.tree_util.tree_leaves_with_path(jax.device_get(actual))
  flat_expected = jax.tree.leaves(jax.device_get(expected))
  assert len(flat_actual) == len(flat_expected)
  for (path, a), e in zip(flat_actual, flat_expected):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol,
                               err_msg=f'{what}{jax.tree_util.keystr(path)}')


# --------------------------------------------------------------------------------------
# Data parallelism: 4 devices compute what 1 device computes.


def test_four_device_train_step_equals_one_device_step():
  assert jax.device_count() == 4, 'tests/conftest.py should give 4 CPU devices'
  config = defaults.base_config()
  config.model = models.tiny_model_config(num_classes=5)
  config.train.mode = 'semi'
  # Per-sample randomness (dropout, cutout boxes, F-Drop's gamma) and VAT's inner gradient
  # are where a sharded step could differ. VAT by finite differences at xi=1e-6 is rounding
  # noise, so its exact Hessian-vector product is used here.
  perturbations.set_counts(config.perturbations, dict(
      vat=1, dropout=1, cutout=1, context_mask=0, object_mask=0, feature_drop=1,
      feature_noise=1))
  config.perturbations.vat.method = 'hvp'
  config.loss.ramp_fraction = 0.0  # the full unsupervised weight from the first step
  num_steps = 10
  model, method = methods.build(config)
  step_fn = train_step.make_train_step(config, model, method, num_steps)

  rng = np.random.default_rng(0)
  batches = []
  for _ in range(2):
    mask = rng.integers(0, 5, (4, 32, 32)).astype(np.int32)
    mask[:, :4] = 255
    batches.append((
        {'image': rng.normal(size=(4, 32, 32, 3)).astype(np.float32), 'mask': mask},
        {'image': rng.normal(size=(4, 32, 32, 3)).astype(np.float32)}))

  one_device = jax.make_mesh((1,), ('data',), axis_types=(AxisType.Auto,),
                             devices=jax.devices()[:1])
  initial = jax.device_get(train_step.create_train_state(config, model, method, num_steps, one_device))

  def run(mesh):
    rep, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    state = jax.device_put(initial, rep)
    step = jax.jit(step_fn, in_shardings=(rep, batch, batch), out_shardings=(rep, rep))
    history = []
    for labelled, unlabelled in batches:
      state, metrics = step(state, jax.device_put(labelled, batch),
                            jax.device_put(unlabelled, batch))
      history.append(jax.device_get(metrics))
    assert len(state.params['encoder']['trunk']) and state.step.sharding.mesh == mesh
    return jax.device_get(state), history

  state_1, metrics_1 = run(one_device)
  state_4, metrics_4 = run(parallel.data_mesh())
  for m4, m1 in zip(metrics_4, metrics_1):
    assert set(m4) == set(m1)
    assert m1['loss_unsup'] > 0 and m1['unsup_weight'] == 30.0
    for name in m1:
      np.testing.assert_allclose(m4[name], m1[name], rtol=1e-5, err_msg=name)
  assert int(state_4.step) == int(state_1.step) == 2
  _assert_trees_close(state_4.params, state_1.params, 1e-5, 1e-6, 'params')
  _assert_trees_close(state_4.batch_stats, state_1.batch_stats, 1e-5, 1e-6, 'batch_stats')
  # The updates themselves (not only the much larger parameters) agree, aux decoders too.
  updates_1 = jax.tree.map(np.subtract, state_1.params, initial.params)
  updates_4 = jax.tree.map(np.subtract, state_4.params, initial.params)
  for name in state_1.params['aux_decoders']:
    assert np.abs(np.concatenate([x.ravel() for x in jax.tree.leaves(
        updates_1['aux_decoders'][name])])).max() > 0, f'{name} decoder got no update'
  for (path, u4), u1, p in zip(jax.tree_util.tree_leaves_with_path(updates_4),
                               jax.tree.leaves(updates_1), jax.tree.leaves(state_1.params)):
    # 1% of the update, plus the rounding of parameter - initial parameter.
    tolerance = 1e-2 * np.abs(u1).max() + 32 * np.spacing(np.abs(p).max())
    assert np.abs(u4 - u1).max() <= tolerance, (
        f'update of {jax.tree_util.keystr(path)} differs')


def _conv_and_matmul_input_dtypes(model, variables, images, **kwargs) -> set[str]:
  """The operand dtypes of every convolution and matmul in the model's jaxpr."""
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, **kwargs))(variables, images)
  found = set()

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ('conv_general_dilated', 'dot_general'):
        found.update(str(v.aval.dtype) for v in eqn.invars)
      for param in eqn.params.values():
        for sub in param if isinstance(param, (list, tuple)) else [param]:
          if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
            visit(getattr(sub, 'jaxpr', sub))

  visit(jaxpr.jaxpr)
  return found


def test_bfloat16_step_computes_in_bf16_keeps_float32_state_and_follows_the_f32_step():
  config = defaults.base_config()
  config.model = models.tiny_model_config(num_classes=5)
  # The perturbations' three kinds at the paper's counts: VAT's inner gradient, per-sample
  # random masks, noise (a decoder more in a stack costs no compile time; types do).
  perturbations.set_counts(config.perturbations, {
      name: count if name in ('vat', 'dropout', 'feature_noise') else 0
      for name, count in perturbations.decoder_counts(config.perturbations).items()})
  config.perturbations.vat.method = 'hvp'
  config.loss.ramp_fraction = 0.0
  rng = np.random.default_rng(0)
  # 48 x 48: a 6 x 6 feature map, as large as PSP's finest bins (at 32 x 32 they would be
  # shrunk to 4 x 4, a case the paper's network never meets).
  images = rng.normal(size=(4, 48, 48, 3)).astype(np.float32)
  # Labels that depend on the image, so that the gradient carries signal, not only noise.
  labelled = {'image': images,
              'mask': np.digitize(images[..., 0], [-1, -0.3, 0.3, 1]).astype(np.int32)}
  unlabelled = {'image': rng.normal(size=(4, 48, 48, 3)).astype(np.float32)}
  mesh = parallel.data_mesh()
  results = {}
  for dtype in ('float32', 'bfloat16'):
    config.model.dtype = dtype
    model, method = methods.build(config)
    state = train_step.create_train_state(config, model, method, 10, mesh)
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    assert _conv_and_matmul_input_dtypes(model, variables, labelled['image']) == {dtype}
    logits, _ = jax.eval_shape(model.apply, variables, labelled['image'])
    assert logits.dtype == np.float32  # losses are computed in float32
    step = jax.jit(train_step.make_train_step(config, model, method, 10))
    new_state, metrics = step(state, labelled, unlabelled)
    floats = {x.dtype for x in jax.tree.leaves((new_state.params, new_state.opt_state,
                                                new_state.batch_stats))
              if np.issubdtype(x.dtype, np.floating)}
    assert floats == {np.dtype('float32')}
    results[dtype] = (state, jax.device_get(new_state), jax.device_get(metrics))
  (initial, f32, m32), (_, bf16, m16) = results['float32'], results['bfloat16']
  for name in ('loss_sup', 'loss_unsup'):
    np.testing.assert_allclose(m16[name], m32[name], rtol=0.05, err_msg=name)
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  update_32 = flat(f32.params) - flat(jax.device_get(initial.params))
  update_16 = flat(bf16.params) - flat(jax.device_get(initial.params))
  cosine = update_16 @ update_32 / (np.linalg.norm(update_16) * np.linalg.norm(update_32))
  # bfloat16 keeps 8 bits of mantissa; the encoder's gradient through batch norm loses
  # the most (a cosine of 0.92 on this tiny random network; 0.99 for the decoders).
  assert cosine > 0.85, f'the bf16 update points elsewhere (cosine {cosine:.3f})'


# --------------------------------------------------------------------------------------
# The command line, and stop / resume / fail fast against its uninterrupted demo run.


def _cli(*args, workdir=None, check=True):
  command = [sys.executable, '-m', 'cct_jax.main', *args]
  if workdir is not None:
    command.append(f'--workdir={workdir}')
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  if check and result.returncode:
    pytest.fail(f'{" ".join(args)} exited with {result.returncode}:\n{result.stderr[-5000:]}')
  return result


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
  """`python -m cct_jax.main --config=configs/demo.py:smoke`: 4 uninterrupted steps, the
  last two profiled; its log in `train.log`."""
  workdir = tmp_path_factory.mktemp('smoke_run')
  trained = _cli('--config=configs/demo.py:smoke', '--config.train.profile_steps=2:4',
                 workdir=workdir)
  (workdir / 'train.log').write_text(trained.stderr)
  return workdir


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _losses_by_step(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return {r['step']: r['loss'] for r in records if 'loss' in r}


def test_demo_smoke_trains_evaluates_and_predicts_from_the_command_line(smoke_run, tmp_path):
  workdir = smoke_run
  trained = _read_json(workdir / 'results_test.json')
  assert 0 <= trained['miou'] <= 1 and trained['split'] == 'test'
  assert sorted(_losses_by_step(workdir)) == [1, 2, 3, 4]
  assert (workdir / 'config.json').exists()
  log = (workdir / 'train.log').read_text()
  assert re.search(r'cpu: 4 \S+ device\(s\) over 1 process\(es\); steps 0 -> 4 of 4 \+ 4 '
                   r'images \(1 \+ 1 per device\)', log), log
  assert 'first step done in' in log and 'profile of steps 3-4 written to' in log
  (trace,) = (workdir / 'profile').glob('plugins/profile/*/*.trace.json.gz')
  ops = profile_top_ops.top_ops(str(trace), top=5)
  assert len(ops) == 5 and all(ms > 0 for _, ms, _ in ops[:1])
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  assert os.listdir(workdir / 'best') == [str(trained['step'])]

  evaluated = _cli('--config=configs/demo.py:smoke', '--mode=eval', workdir=workdir)
  assert f'restored step {trained["step"]} from' in evaluated.stderr
  assert 'from scratch' not in evaluated.stderr
  for split in ('val', 'test'):
    scores = _read_json(workdir / f'eval_{split}.json')
    assert 0 <= scores['miou'] <= 1 and scores['step'] == trained['step']
    assert set(scores['per_class_iou']) == {'brick', 'grass', 'gravel', 'moon', 'ihc'}
  # The same (best) checkpoint and the same whole-image inference as the end of training.
  assert _read_json(workdir / 'eval_test.json')['miou'] == pytest.approx(trained['miou'],
                                                                         abs=1e-3)
  for key in ('confusion_matrix', 'mean_class_accuracy', 'per_class_iou', 'pixel_accuracy'):
    assert key in trained
  # --step scores that checkpoint, not the best, and says so.
  other = {2: 4, 4: 2}[trained['step']]
  stepped = _cli('--config=configs/demo.py:smoke', '--mode=eval', f'--step={other}',
                 workdir=workdir)
  assert f'test (step {other}), written to' in stepped.stdout
  assert _read_json(workdir / 'eval_test.json')['step'] == other
  # A model the checkpoint was not saved from stops before restoring, every change listed.
  drift = _cli('--config=configs/demo.py:smoke', '--mode=eval', '--config.model.width=16',
               workdir=workdir, check=False)
  assert drift.returncode != 0 and 'model.width: 8 in' in drift.stderr
  assert 'Traceback' not in drift.stderr

  images, predictions = tmp_path / 'images', tmp_path / 'predictions'
  images.mkdir()
  rng = np.random.default_rng(0)
  # (height, width) as seen. The phone photo is 5x the demo's scale and stored on its side
  # with EXIF orientation 6 (turn 90 degrees clockwise to view).
  sizes = {'square': (64, 64), 'odd': (50, 70), 'phone': (320, 240)}
  for name, (height, width) in sizes.items():
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if name == 'phone':
      exif = Image.Exif()
      exif[0x0112] = 6
      Image.fromarray(np.rot90(pixels)).save(images / f'{name}.jpg', exif=exif)
    else:
      Image.fromarray(pixels).save(images / f'{name}.png')
  predicted = _cli('--config=configs/demo.py:smoke', '--mode=predict', f'--input={images}',
                   f'--output={predictions}', '--step=2', workdir=workdir)
  assert 'prediction: 3/3 images' in predicted.stderr
  for name, (height, width) in sizes.items():
    labels = Image.open(predictions / f'{name}.png')
    assert labels.mode == 'P' and labels.size == (width, height)
    assert np.asarray(labels).max() < 5
    overlay = Image.open(predictions / f'{name}_overlay.jpg')
    assert overlay.size == (width, height) and overlay.mode == 'RGB'


def test_stop_request_catches_sigint_and_sigterm_and_restores_handlers():
  before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  for sig in (signal.SIGINT, signal.SIGTERM):
    with loop.StopRequest() as stop:
      assert stop.requested is None
      signal.raise_signal(sig)  # would end the test session without the handler
      assert stop.requested == sig.name
  assert {sig: signal.getsignal(sig) for sig in before} == before


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_matches_an_uninterrupted_one(
    smoke_run, tmp_path, sigterm_after_first_checkpoint):
  config = _demo_config('smoke')  # what the command line ran, 4 steps, checkpoints every 2
  workdir = str(tmp_path / 'run')

  # SIGTERM arrives while step 3 runs, after the step-2 checkpoint was written: the run
  # must finish step 3, save it (3 is not a checkpoint_every step) and return.
  handler = signal.getsignal(signal.SIGTERM)
  with sigterm_after_first_checkpoint() as saved:
    stopped = train.train_and_evaluate(config, workdir)
  assert stopped == {'stopped_at': 3}
  assert saved == [2, 3]
  assert signal.getsignal(signal.SIGTERM) == handler
  assert not os.path.exists(os.path.join(workdir, 'results_test.json'))
  uninterrupted = _read_json(smoke_run / 'config.json')
  uninterrupted['train']['profile_steps'] = ''  # the fixture's run alone was profiled
  assert _read_json(os.path.join(workdir, 'config.json')) == uninterrupted

  resumed = train.train_and_evaluate(config, workdir)  # resumes from step 3 by itself
  full = _read_json(smoke_run / 'results_test.json')
  assert resumed['step'] == full['step']
  assert resumed['miou'] == pytest.approx(full['miou'], abs=1e-6)

  abstract = _abstract_state(config, num_steps=4)
  state_full = _restore_latest(str(smoke_run / 'checkpoints'), abstract)
  state_resumed = _restore_latest(os.path.join(workdir, 'checkpoints'), abstract)
  assert int(state_full.step) == int(state_resumed.step) == 4
  _assert_trees_close(state_resumed.params, state_full.params, 1e-6, 1e-7, 'params')
  _assert_trees_close(state_resumed.batch_stats, state_full.batch_stats, 1e-6, 1e-7,
                      'batch_stats')
  _assert_trees_close(state_resumed.opt_state, state_full.opt_state, 1e-6, 1e-7,
                      'opt_state')

  # Every step, the resumed one included, saw the same batches and randomness.
  full_losses, resumed_losses = _losses_by_step(smoke_run), _losses_by_step(workdir)
  assert sorted(resumed_losses) == sorted(full_losses) == [1, 2, 3, 4]
  for step, loss in full_losses.items():
    assert resumed_losses[step] == pytest.approx(loss, rel=1e-6), step


def test_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch):
  # The demo smoke run, metrics fetched only at the end (step 4), checkpoints every 2
  # steps: the NaN of step 3 must be caught, and named, before step 4 is checkpointed.
  config = _demo_config('smoke')
  config.train.update(dict(log_every=5, eval_every=5))
  real_global_batch = parallel.global_batch
  labelled_batches = []

  def global_batch(mesh, host_batch):
    if isinstance(host_batch, dict) and 'mask' in host_batch:
      labelled_batches.append(True)
      if len(labelled_batches) >= 3:
        host_batch = dict(host_batch, image=np.full_like(host_batch['image'], np.nan))
    return real_global_batch(mesh, host_batch)

  monkeypatch.setattr(parallel, 'global_batch', global_batch)
  workdir = str(tmp_path / 'run')
  handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(FloatingPointError, match=r'\bstep 3\b') as failure:
    train.train_and_evaluate(config, workdir)
  assert 'step 2' in str(failure.value)  # the checkpoint it keeps
  assert signal.getsignal(signal.SIGTERM) == handler

  mngr = checkpointing.manager(os.path.join(workdir, 'checkpoints'))
  assert list(mngr.all_steps()) == [2]
  state = checkpointing.restore(mngr, _abstract_state(config, num_steps=4))
  assert int(state.step) == 2
  for leaf in jax.tree.leaves((state.params, state.batch_stats, state.opt_state)):
    assert np.all(np.isfinite(leaf))


def test_config_typo_fails_before_anything_starts(tmp_path):
  workdir = tmp_path / 'typo'
  result = _cli('--config=configs/demo.py:smoke', '--config.optim.lrr=0.1', workdir=workdir,
                check=False)
  assert result.returncode != 0
  assert 'lrr' in result.stderr
  assert not workdir.exists()


def test_summary_prints_the_parameter_table_and_writes_summary_json(tmp_path):
  workdir = tmp_path / 'summary'
  result = _cli('--config=configs/voc.py', '--mode=summary', workdir=workdir)
  expected = {'trunk': 23631808, 'psp': 23073792, 'main_decoder': 16296,
              'aux_decoders': 488880, 'total': 47210776}
  rows = [line.replace(',', '').split() for line in result.stdout.splitlines()]
  for name, count in expected.items():
    assert [name, str(count)] in rows, f'no row "{name} {count:,}" in:\n{result.stdout}'
  assert _read_json(workdir / 'summary.json') == expected


def test_inconsistent_config_fails_before_anything_starts(tmp_path):
  config = _demo_config()
  config.model.num_classes = 7
  with pytest.raises(ValueError, match='model.num_classes=7 but data.num_classes=5'):
    train.train_and_evaluate(config, str(tmp_path / 'classes'))
  config = _demo_config()
  config.perturbations.feature_nosie = ml_collections.ConfigDict(dict(count=2))
  with pytest.raises(ValueError, match=r"unknown perturbation types \['feature_nosie'\]"):
    train.train_and_evaluate(config, str(tmp_path / 'roster'))
  assert not os.listdir(tmp_path)


def test_summary_with_a_data_root_checks_every_file(tmp_path):
  voc_root = fakes.write_voc_folder(str(tmp_path / 'data'), num_train=6, num_val=2)
  args = ('--config=configs/voc.py:smoke', '--mode=summary', f'--config.data.root={voc_root}',
          '--config.data.num_labelled=2')
  result = _cli(*args, workdir=tmp_path / 'ok')
  assert 'train_labelled' in result.stdout and 'pixel frequency per class' in result.stdout
  sizes = {line.split()[0]: int(line.split()[1]) for line in result.stdout.splitlines()
           if line.endswith(' examples')}
  assert sizes == {'train_labelled': 2, 'train_unlabelled': 4, 'val': 2}

  os.remove(os.path.join(voc_root, 'JPEGImages', '2007_000001.jpg'))
  with open(os.path.join(voc_root, 'JPEGImages', '2007_000003.jpg'), 'wb') as f:
    f.write(b'not a jpeg')
  result = _cli(*args, workdir=tmp_path / 'broken', check=False)
  assert result.returncode != 0
  assert '2007_000001' in result.stderr and '2007_000003' in result.stderr  # both listed
