"""CCT on several domains (paper sec. 3.4, App. E): a domain's step leaves the other
domain's decoders alone, the gradient reversal layer and the discriminator, exact resume of
an interrupted two-domain run, and the two-domain demo end to end from the command line.

Fashion-MNIST may be missing (CI): the demo's fashion5 domain reads tiny IDX files
written by the test.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cct_jax import (checkpointing, defaults, losses, methods, multidomain, parallel,
                     perturbations, segmentation, train, train_step)
from cct_jax.models import cct, multidomain as multidomain_model, pretrained
from cct_jax.models.discriminator import Discriminator, gradient_reversal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, 'configs')


def _leaves_under(tree, key: str) -> list:
  """(path, leaf) of every leaf of `tree` below dict key `key`."""
  return [(jax.tree_util.keystr(path), leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
          if any(getattr(entry, 'key', None) == key for entry in path)]


def _differs(a, b) -> bool:
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(jax.device_get(a)),
                                                      jax.tree.leaves(jax.device_get(b))))


# --------------------------------------------------------------------------------------
# The adversarial branch (App. E).


def test_gradient_reversal_is_the_identity_forward_and_minus_lambda_backward():
  x = jax.random.normal(jax.random.key(0), (2, 3, 4))
  weights = jax.random.normal(jax.random.key(1), x.shape)
  np.testing.assert_array_equal(gradient_reversal(x, 0.3), x)
  grad = jax.grad(lambda x: jnp.sum(weights * gradient_reversal(x, 0.3)))(x)
  np.testing.assert_array_equal(grad, -0.3 * weights)

  # Through the discriminator: the encoder side gets -lambda x the discriminator's own
  # gradient, while the discriminator's parameters get the plain one.
  discriminator = Discriminator(num_domains=2, features=(4, 8))
  params = discriminator.init(jax.random.key(2), x[None])
  labels = jnp.ones((1, 2, 3), jnp.int32)

  def loss(params, z, scale):
    z = gradient_reversal(z, scale) if scale else z
    return losses.cross_entropy(discriminator.apply(params, z), labels)

  plain_params, plain_z = jax.grad(loss, argnums=(0, 1))(params, x[None], 0.0)
  reversed_params, reversed_z = jax.grad(loss, argnums=(0, 1))(params, x[None], 0.02)
  np.testing.assert_allclose(reversed_z, -0.02 * plain_z, rtol=1e-6)
  assert not _differs(reversed_params, plain_params)


def test_discriminator_predicts_every_position_of_z_at_an_eighth_of_the_image():
  encoder = cct.Encoder(stage_sizes=(1, 1, 1, 1), width=4, psp_features=16, output_stride=8)
  model = multidomain_model.MultiDomainCCT({'a': 3, 'b': 5}, encoder=encoder,
                                           aux_counts={}, adversarial_weight=0.02)
  image_shape = (2, 64, 96, 3)
  variables = jax.eval_shape(lambda k: cct.init_variables(model, k, image_shape),
                             jax.random.key(0))
  logits = jax.eval_shape(
      lambda v, x: model.apply(v, x, method=lambda m, x: m.discriminator(m.encoder(x))),
      variables, jax.ShapeDtypeStruct(image_shape, jnp.float32))
  assert logits.shape == (2, 64 // 8, 96 // 8, 2)
  kernels = [variables['params']['discriminator'][name]['kernel'].shape
             for name in ('conv0', 'conv1', 'conv2', 'conv3', 'classifier')]
  assert kernels == [(3, 3, 16, 64), (3, 3, 64, 128), (3, 3, 128, 256), (3, 3, 256, 512),
                     (1, 1, 512, 2)]  # Table 8


# --------------------------------------------------------------------------------------
# A domain's step.


def _unit_config():
  """tex5 (5 classes) + fashion11 (11), the demo's tiny model, two perturbation types,
  the discriminator on; no data is read."""
  config = defaults.load_config_file(os.path.join(CONFIGS, 'demo.py'), 'tex5,smoke')
  perturbations.set_counts(config.perturbations, {
      name: int(name in ('dropout', 'feature_noise'))
      for name in perturbations.decoder_counts(config.perturbations)})
  config.loss.ramp_fraction = 0.0
  config = defaults.multi_domain(config, {'tex5': defaults.data_config('tex5'),
                                          'fashion11': defaults.data_config('fashion11')})
  config.adversarial.enabled = True
  return config


def _batches(num_classes: int, seed: int):
  rng = np.random.default_rng(seed)
  return ({'image': rng.normal(size=(4, 32, 32, 3)).astype(np.float32),
           'mask': rng.integers(0, num_classes, (4, 32, 32)).astype(np.int32)},
          {'image': rng.normal(size=(4, 32, 32, 3)).astype(np.float32)})


@pytest.mark.parametrize('domain_batch_stats', [False, True])
def test_a_domain_step_changes_the_encoder_and_leaves_the_other_domains_decoders_alone(
    domain_batch_stats):
  config = _unit_config()  # num_steps=20 as the next test: the same programs, compiled once
  config.domain_batch_stats = domain_batch_stats
  segmentation.check_config(config)
  assert multidomain.domain_names(config) == ('fashion11', 'tex5')
  model, method = methods.build(config)
  mesh = parallel.data_mesh()
  state = multidomain.create_train_state(config, model, method, num_steps=20, mesh=mesh)
  step = {name: jax.jit(multidomain.make_domain_step(config, model, method, name, num_steps=20))
          for name in ('tex5', 'fashion11')}

  # tex5 first, so that its decoders have momentum when fashion11's step runs.
  after_tex5, _ = step['tex5'](state, *_batches(5, seed=0))
  after_fashion, metrics = step['fashion11'](after_tex5, *_batches(11, seed=1))

  frozen = _leaves_under((after_tex5.params, after_tex5.batch_stats, after_tex5.opt_state),
                         'decoders_tex5')
  kept = _leaves_under((after_fashion.params, after_fashion.batch_stats,
                        after_fashion.opt_state), 'decoders_tex5')
  decoder_leaves = 1 + 2 * cct.decoder_upsamples(config.model.output_stride)
  assert len(_leaves_under(after_tex5.params, 'decoders_tex5')) == 3 * decoder_leaves
  assert [path for path, _ in kept] == [path for path, _ in frozen]
  for (path, leaf), (_, before) in zip(kept, frozen):
    np.testing.assert_array_equal(leaf, before, err_msg=path)

  for part in ('encoder', 'decoders_fashion11', 'discriminator'):
    assert _differs(after_fashion.params[part], after_tex5.params[part]), part
  assert np.isfinite(metrics['loss_adversarial']) and metrics['loss_adversarial'] > 0
  assert metrics['loss'] > metrics['loss_sup']
  if domain_batch_stats:  # fashion11's step updates its own BN statistics only
    assert _differs(after_fashion.batch_stats['fashion11'], after_tex5.batch_stats['fashion11'])
    assert not _differs(after_fashion.batch_stats['tex5'], after_tex5.batch_stats['tex5'])
    assert _differs(after_tex5.batch_stats['tex5'], state.batch_stats['tex5'])
    return
  assert _differs(after_fashion.batch_stats['encoder'], after_tex5.batch_stats['encoder'])

  # Without carrying tex5's decoders over, momentum and weight decay would move them: the
  # optimiser's update for a zero gradient is not zero there after tex5's step.
  zero = jax.tree.map(jnp.zeros_like, after_tex5.params)
  updates, _ = jax.jit(after_tex5.tx.update)(zero, after_tex5.opt_state, after_tex5.params)
  assert any(np.abs(u).max() > 0
             for u in jax.tree.leaves(jax.device_get(updates['decoders_tex5'])))


def test_adversarial_term_stays_bounded_over_alternating_steps():
  """Each step shows the discriminator one domain only; weighted by lambda_adv on both
  sides (Eq. 12) it stays near chance instead of overshooting (at full weight for the
  discriminator, this run reached 1e10 by step 8 and NaN at step 9)."""
  config = _unit_config()
  model, method = methods.build(config)
  state = multidomain.create_train_state(config, model, method, num_steps=20, mesh=parallel.data_mesh())
  step = {name: jax.jit(multidomain.make_domain_step(config, model, method, name, num_steps=20))
          for name in ('tex5', 'fashion11')}
  for i in range(12):
    name = ('fashion11', 'tex5')[i % 2]
    state, metrics = step[name](state, *_batches(11 if name == 'fashion11' else 5, seed=i))
    domain_ce = metrics['loss_adversarial'] / config.adversarial.weight
    assert 0 < domain_ce < 2 * np.log(2), (i, domain_ce)


def test_domain_streams_resume_at_the_iterations_each_domain_trained():
  for num_domains in (2, 3):
    for step in range(10):
      for index in range(num_domains):
        expected = sum(1 for t in range(step) if t % num_domains == index)
        assert multidomain.domain_steps_done(step, index, num_domains) == expected


def test_paper_configs_assemble_and_pass_the_checks():
  for path, arg, domains in (('cityscapes_camvid.py', '50', {'camvid': 11, 'cityscapes': 19}),
                             ('cityscapes_camvid.py', 'smoke', {'camvid': 11, 'cityscapes': 19}),
                             ('cityscapes_sun.py', '1500', {'cityscapes': 19, 'sun': 13})):
    config = defaults.load_config_file(os.path.join(CONFIGS, path), arg)
    if arg != 'smoke':  # the paper's configs stop until the ImageNet weights are named
      with pytest.raises(pretrained.PretrainedWeightsError, match='model.pretrained is not set'):
        segmentation.check_config(config)
      config.model.pretrained = pretrained.FROM_SCRATCH
    segmentation.check_config(config)
    assert {name: d.num_classes for name, d in config.domains.items()} == domains
    assert 'data' not in config and 'num_classes' not in config.model
    assert not config.adversarial.enabled and config.adversarial.weight == 0.02
    if arg != 'smoke':
      assert {d.num_labelled for d in config.domains.values()} == {int(arg)}
  with pytest.raises(ValueError, match='two or more domains'):
    config = _unit_config()
    del config.domains['tex5']
    segmentation.check_config(config)


# --------------------------------------------------------------------------------------
# The two-domain demo, from the command line and interrupted in process.


def _cli(*args, workdir, check=True):
  command = [sys.executable, '-m', 'cct_jax.main', *args, f'--workdir={workdir}']
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  if check and result.returncode:
    pytest.fail(f'{" ".join(args)} exited with {result.returncode}:\n{result.stderr[-5000:]}')
  return result


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory, idx_dir):
  """`configs/demo_two_domains.py:smoke` from the command line: 4 uninterrupted steps."""
  workdir = tmp_path_factory.mktemp('two_domains')
  _cli('--config=configs/demo_two_domains.py:smoke',
       f'--config.domains.fashion5.generated.idx_dir={idx_dir}', workdir=workdir)
  return workdir


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_two_domain_demo_smoke_trains_evaluates_and_predicts(smoke_run, idx_dir, tmp_path):
  workdir, override = smoke_run, f'--config.domains.fashion5.generated.idx_dir={idx_dir}'
  results = _read_json(workdir / 'results.json')
  assert set(results['domains']) == {'fashion5', 'tex5'}
  assert {r['split'] for r in results['domains'].values()} == {'test'}
  assert results['miou'] == pytest.approx(
      np.mean([r['miou'] for r in results['domains'].values()]))
  # Iterations alternate, in the sorted order of the domain names.
  losses_by_step = {r['step']: [k for k in r if k.startswith('loss/')]
                    for r in _metrics(workdir) if any(k.startswith('loss/') for k in r)}
  assert losses_by_step == {1: ['loss/fashion5'], 2: ['loss/tex5'], 3: ['loss/fashion5'],
                            4: ['loss/tex5']}
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  assert os.listdir(workdir / 'best') == [str(results['step'])]

  output = _cli('--config=configs/demo_two_domains.py:smoke', override, '--mode=eval',
                workdir=workdir).stdout
  for name, classes in (('tex5', 'brick'), ('fashion5', 'background')):
    for split in ('val', 'test'):
      scores = _read_json(workdir / f'eval_{name}_{split}.json')
      assert classes in scores['per_class_iou'] and scores['step'] == results['step']
    # The same (best) checkpoint and inference as the end of training.
    assert _read_json(workdir / f'eval_{name}_test.json')['miou'] == pytest.approx(
        results['domains'][name]['miou'], abs=1e-3)
  assert f'average mIoU over fashion5 test, tex5 test: {100 * results["miou"]:.1f}' in output

  images, predictions = tmp_path / 'images', tmp_path / 'predictions'
  images.mkdir()
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8)).save(
      images / 'odd.png')
  predict = ('--config=configs/demo_two_domains.py:smoke', override, '--mode=predict',
             f'--input={images}', f'--output={predictions}')
  failed = _cli(*predict, workdir=workdir, check=False)
  assert failed.returncode != 0 and "pass --domain, one of ('fashion5', 'tex5')" in failed.stderr
  _cli(*predict, '--domain=fashion5', workdir=workdir)
  labels = Image.open(predictions / 'odd.png')
  assert labels.mode == 'P' and labels.size == (70, 50) and np.asarray(labels).max() < 5

  single = _cli('--config=configs/demo.py:smoke', '--mode=eval', '--domain=tex5',
                workdir=tmp_path / 'single', check=False)
  assert single.returncode != 0 and '--domain picks the decoders' in single.stderr


def test_interrupted_two_domain_run_resumes_to_the_uninterrupted_result(
    smoke_run, two_domain_config, tmp_path, sigterm_after_first_checkpoint):
  config = two_domain_config  # what the command line ran
  workdir = str(tmp_path / 'run')

  # SIGTERM while iteration 3 (fashion5's second) runs, after the step-2 checkpoint.
  with sigterm_after_first_checkpoint() as saved:
    assert train.train_and_evaluate(config, workdir) == {'stopped_at': 3}
  assert saved == [2, 3]
  assert not os.path.exists(os.path.join(workdir, 'results.json'))

  resumed = train.train_and_evaluate(config, workdir)  # from step 3, by itself
  full = _read_json(smoke_run / 'results.json')
  assert resumed['step'] == full['step']
  for name in ('fashion5', 'tex5'):
    assert resumed['domains'][name]['miou'] == pytest.approx(full['domains'][name]['miou'],
                                                             abs=1e-6)

  model, method = methods.build(config)
  mesh = parallel.data_mesh()
  shapes = jax.eval_shape(lambda: train_step.create_train_state(config, model, method, 4, mesh))
  abstract = checkpointing.abstract_with_sharding(shapes, parallel.replicated(mesh))
  final = {run: checkpointing.restore(checkpointing.manager(os.path.join(run, 'checkpoints')),
                                      abstract) for run in (str(smoke_run), workdir)}
  state_full, state_resumed = final[str(smoke_run)], final[workdir]
  assert int(state_full.step) == int(state_resumed.step) == 4
  for part in ('params', 'batch_stats', 'opt_state'):
    flat_resumed = jax.tree_util.tree_leaves_with_path(getattr(state_resumed, part))
    for (path, a), b in zip(flat_resumed, jax.tree.leaves(getattr(state_full, part))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7,
                                 err_msg=f'{part}{jax.tree_util.keystr(path)}')

  # Every iteration, the resumed ones included, saw the same batches and randomness.
  def losses_by_step(run):
    return {(r['step'], k): v for r in _metrics(run) for k, v in r.items()
            if k.startswith('loss/')}

  full_losses, resumed_losses = losses_by_step(smoke_run), losses_by_step(workdir)
  assert sorted(resumed_losses) == sorted(full_losses) and len(full_losses) == 4
  for key, value in full_losses.items():
    assert resumed_losses[key] == pytest.approx(value, rel=1e-6), key
