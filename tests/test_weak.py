"""Weak image-level labels (paper sec. 3.3): image-label files, CAM thresholds, the
weak loss and where its gradients go, and the three commands end to end on tiny fashion5
scenes (from IDX files written here, so no system dataset is needed)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cct_jax import (checkpointing, classify, crf, defaults, losses, methods, models,
                     parallel, perturbations, state as state_lib, train_step, visualize)
from cct_jax import weak as weak_lib
from cct_jax.data import factory, pipeline, sources, weak
from cct_jax.methods import cct as methods_cct
from cct_jax.weak import cams, pseudo_labels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------
# CAMs and their thresholds.


def test_thresholding_a_constructed_cam_gives_the_expected_pixels():
  foreground = np.array([1, 2, 4])  # class 3 merged away; background 0
  # Normalised CAMs of one 2x4 image, one value per class channel.
  cam = np.zeros((1, 2, 4, 3), np.float32)
  cam[0, 0, 0] = (0.00, 0.00, 0.00)  # nothing: background
  cam[0, 0, 1] = (0.04, 0.01, 0.00)  # max below theta_bg: background
  cam[0, 0, 2] = (0.05, 0.00, 0.00)  # max at theta_bg (not below): unsure
  cam[0, 0, 3] = (0.10, 0.29, 0.20)  # between the thresholds: unsure
  cam[0, 1, 0] = (0.00, 0.30, 0.00)  # at theta_fg (not above): unsure
  cam[0, 1, 1] = (0.31, 0.00, 0.00)  # above: class 1
  cam[0, 1, 2] = (0.40, 0.90, 0.50)  # argmax channel 1: class 2
  cam[0, 1, 3] = (0.20, 0.60, 0.95)  # argmax channel 2: class 4
  labels = jax.jit(lambda c: cams.pseudo_labels(c, foreground, theta_bg=0.05, theta_fg=0.30,
                                                background_class=0))(cam)
  np.testing.assert_array_equal(labels, [[[0, 0, 255, 255], [255, 1, 2, 4]]])
  assert labels.dtype == jnp.int32


def test_cams_are_relu_of_the_class_weights_normalised_per_present_class():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(2, 3, 3, 5)).astype(np.float32)
  kernel = rng.normal(size=(5, 3)).astype(np.float32)
  raw = models.class_activation_maps(z, kernel)
  np.testing.assert_allclose(raw, np.maximum(np.einsum('bhwd,df->bhwf', z, kernel), 0),
                             rtol=1e-5, atol=1e-6)
  present = np.array([[True, False, True], [True, True, True]])
  valid = np.ones((2, 3, 3), bool)
  valid[1, 2] = False  # a padded row: not part of the image
  big = np.zeros((2, 3, 3, 3), np.float32)
  big[1, 2, 0, 0] = 1e3  # a large value in the padding must not set the scale
  normalised = np.asarray(cams.normalise_cams(raw + big, present, valid))
  assert np.all(normalised[0, ..., 1] == 0)  # an absent class has no CAM
  for b, c in zip(*np.nonzero(present)):
    inside = normalised[b][valid[b]][:, c]
    peak = np.asarray(raw)[b][valid[b]][:, c].max()
    np.testing.assert_allclose(inside.max(), 1.0 if peak > 0 else 0.0, rtol=1e-5)
    assert inside.min() >= 0
  assert np.all(normalised[1, 2] == 0)


def test_multi_scale_and_flip_cams_average_mirrored_copies_at_the_input_size():
  images = jnp.asarray(np.random.default_rng(1).normal(size=(1, 16, 16, 3)), jnp.float32)
  # A "network" whose CAM is the mean colour, pooled 8x: mirroring must be undone.
  cam_fn = lambda x: jnp.mean(x, -1, keepdims=True)[:, ::8, ::8]
  single = cams.multi_scale_cams(cam_fn, images)
  assert single.shape == (1, 16, 16, 1)
  flipped = cams.multi_scale_cams(cam_fn, images, scales=(1.0,), flip=True)
  mirrored_only = jax.image.resize(cam_fn(images[:, :, ::-1])[:, :, ::-1], (1, 16, 16, 1),
                                   'bilinear')
  np.testing.assert_allclose(flipped, (single + mirrored_only) / 2, rtol=1e-5, atol=1e-6)
  assert cams.multi_scale_cams(cam_fn, images, scales=(0.5, 1.5)).shape == (1, 16, 16, 1)


def test_confident_labels_are_irns_argmax_behind_a_constant_background_channel():
  foreground = np.array([1, 2, 4])
  cam = np.random.default_rng(3).random((2, 5, 6, 3)).astype(np.float32)
  cam[0, 0, 0] = (0.30, 0.10, 0.00)  # a tie with the threshold goes to the background
  for theta in (0.05, 0.30, 0.80):
    padded = np.concatenate([np.full(cam.shape[:-1] + (1,), theta, np.float32), cam], -1)
    expected = np.concatenate([[0], foreground])[np.argmax(padded, axis=-1)]
    np.testing.assert_array_equal(
        cams.confident_labels(cam, foreground, theta=theta, background_class=0), expected)


def _three_band_scene():
  """A 24x48 image of three flat bands, and normalised CAMs of its one present class (3):
  sure background (CAM 0), a band between the thresholds (0.15), the object (0.9)."""
  colours = np.array([[30, 30, 30], [200, 200, 60], [60, 90, 220]], np.uint8)
  band = np.repeat(np.arange(3), 16)[None].repeat(24, axis=0)
  cam = np.zeros((1, 24, 48, 4), np.float32)
  cam[0, ..., 2] = np.array([0.0, 0.15, 0.9])[band]  # channel 2 of foreground 1..4
  return colours[band], band, cam


def test_two_crf_pseudo_labels_leave_255_where_the_crfs_disagree():
  image, band, cam = _three_band_scene()
  foreground, crf_config = np.arange(1, 5), crf.default_crf_config()
  fg, bg = (np.asarray(cams.confident_labels(cam, foreground, theta=theta,
                                             background_class=0))[0] for theta in (0.30, 0.05))
  labels = pseudo_labels.two_crf_labels(image, fg, bg, [0, 3], 0, crf_config)
  fg_refined, bg_refined = crf.refine_among(image, np.stack([fg, bg]), [0, 3], crf_config)
  disagree = fg_refined != bg_refined
  # The middle band: background from theta_fg, object from theta_bg; the CRFs keep it so.
  assert disagree[band == 1].mean() > 0.9 and not disagree[band != 1].any()
  np.testing.assert_array_equal(labels[disagree], 255)
  np.testing.assert_array_equal(labels[~disagree], fg_refined[~disagree])
  np.testing.assert_array_equal(labels[band == 2], 3)
  np.testing.assert_array_equal(labels[band == 0], 0)


def test_two_crfs_keep_the_foreground_crfs_object_as_the_authors_do():
  fg = np.array([[0, 0, 2, 2, 1]])
  bg = np.array([[0, 1, 2, 0, 2]])
  np.testing.assert_array_equal(pseudo_labels.agreed_labels(fg, bg, background_class=0),
                                [[0, 255, 2, 2, 1]])


def test_each_rule_refines_within_what_the_image_contains():
  image, band, cam = _three_band_scene()
  config = defaults.base_config('fashion5')
  config.weak.update(theta_bg=0.05, theta_fg=0.30)
  present = np.zeros(5, bool)
  present[3] = True
  example = {'image': image, 'image_labels': present}
  foreground = np.arange(1, 5)
  labels = dict(cam=np.asarray(cams.pseudo_labels(cam, foreground, theta_bg=0.05, theta_fg=0.30,
                                                  background_class=0))[0],
                **{name: np.asarray(cams.confident_labels(cam, foreground, theta=theta,
                                                          background_class=0))[0]
                   for name, theta in (('fg', 0.30), ('bg', 0.05))})
  config.weak.pseudo_label_rule = 'two_crfs'
  two = pseudo_labels.refined_labels(config, example, labels)
  assert set(np.unique(two)) == {0, 3, 255}
  config.weak.pseudo_label_rule = 'one_crf'
  one = pseudo_labels.refined_labels(config, example, labels)
  assert 255 not in one and set(np.unique(one[band != 1])) == {0, 3}


# --------------------------------------------------------------------------------------
# The weak loss L_w (Eq. 6).


def test_weak_loss_ignores_unsure_pixels_and_is_finite_without_any():
  rng = np.random.default_rng(2)
  aux = jnp.asarray(rng.normal(size=(3, 2, 4, 4, 5)), jnp.float32)
  labels = rng.integers(0, 5, (2, 4, 4)).astype(np.int32)
  labels[:, :2] = 255
  changed = aux.at[:, :, :2].set(100.0)  # only where the pseudo-label is 255
  assert losses.weak_loss(aux, labels) == pytest.approx(float(losses.weak_loss(changed, labels)))
  unsure = np.full_like(labels, 255)
  value, grad = jax.value_and_grad(losses.weak_loss)(aux, unsure)
  assert value == 0 and np.all(np.isfinite(grad)) and not np.any(grad)
  # Over perturbation types, the mean over all K decoders (2 of one type, 1 of another).
  ce = lambda stacked: {'weak': jax.vmap(losses.cross_entropy, (0, None))(stacked, labels)}
  split = {'a': ce(aux[:2]), 'b': ce(aux[2:])}
  assert methods_cct.mean_over_decoders(split)['weak'] == pytest.approx(
      float(losses.weak_loss(aux, labels)), rel=1e-6)


def test_weak_loss_trains_the_auxiliary_decoders_and_encoder_never_the_main_decoder():
  config = defaults.base_config('fashion5')
  config.model = models.tiny_model_config(5)
  counts = dict(dropout=1, feature_noise=2)
  model = models.model_from_config(config.model, counts)
  # Jitted: op by op, each of the model's hundreds of operations compiles by itself.
  variables = jax.jit(lambda k: models.init_variables(model, k, (2, 32, 32, 3)))(
      jax.random.key(0))
  rng = np.random.default_rng(3)
  images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  labels = rng.integers(0, 5, (2, 32, 32)).astype(np.int32)
  labels[0] = 255
  fns = perturbations.build_perturbations(config.perturbations)

  def loss(params):
    (main, aux), _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                 images, train=True, perturbations=fns, key=jax.random.key(1),
                                 sub_pixel=True, mutable=['batch_stats'])
    losses_of = methods_cct.decoder_losses(config, main, labels, rows=4)
    return methods_cct.mean_over_decoders(
        {name: decoders.map(losses_of)[0] for name, decoders in aux.items()})['weak']

  grads = jax.jit(jax.grad(loss))(variables['params'])
  norm = lambda tree: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))
  assert norm(grads['main_decoder']) == 0
  assert norm(grads['encoder']) > 0
  for name in counts:
    assert norm(grads['aux_decoders'][name]) > 0, name


# --------------------------------------------------------------------------------------
# Image-level labels and pseudo-label files.


def _data_config(idx_dir, **overrides):
  cfg = factory.default_data_config('fashion5')
  cfg.generated.update(dict(idx_dir=idx_dir, sizes=dict(train=12, val=4, test=4),
                            labelled_pool=4))
  cfg.num_labelled = 2
  cfg.update(overrides)
  return cfg


def test_image_labels_from_masks_a_text_file_or_cls_labels_npy(idx_dir, tmp_path):
  cfg = _data_config(idx_dir)
  from_masks = factory.make_weak_source(cfg)
  assert len(from_masks) == 8
  truth = factory.make_source(cfg, 'train_unlabelled', keep_masks=True)
  for i in range(len(from_masks)):
    expected = np.bincount(truth[i]['mask'].ravel(), minlength=5) > 0
    np.testing.assert_array_equal(from_masks[i]['image_labels'], expected)
  assert 'mask' not in factory.make_source(cfg, 'train_unlabelled')[0]

  ids = [from_masks[i]['id'] for i in range(8)]
  text = tmp_path / 'labels.txt'
  lines = ['# id classes', ''] + [f'{image_id} 0 {1 + i % 4}' for i, image_id in enumerate(ids)]
  text.write_text('\n'.join(lines) + '\n')
  labelled = factory.make_weak_source(_data_config(idx_dir, image_labels=str(text)))
  for i in range(8):
    assert np.flatnonzero(labelled[i]['image_labels']).tolist() == [0, 1 + i % 4]

  npy = tmp_path / 'cls_labels.npy'
  np.save(npy, {image_id: np.eye(4)[i % 4] for i, image_id in enumerate(ids)})
  labelled = factory.make_weak_source(_data_config(idx_dir, image_labels=str(npy)))
  for i in range(8):
    assert np.flatnonzero(labelled[i]['image_labels']).tolist() == [1 + i % 4]


def test_bad_image_label_files_name_the_file_line_and_id(idx_dir, tmp_path):
  ids = sources.example_ids(factory.make_source(_data_config(idx_dir), 'train_unlabelled'))
  text = tmp_path / 'labels.txt'
  good = [f'{image_id} 1' for image_id in ids[2:]]
  text.write_text('\n'.join([f'{ids[0]} 1 x', f'{ids[1]} 7', 'train-99999 2', f'{ids[0]} 3']
                            + good) + '\n')
  with pytest.raises(sources.DataError) as error:
    factory.make_weak_source(_data_config(idx_dir, image_labels=str(text)))
  problems = error.value.problems
  assert problems == [
      f"{text}:1: {ids[0]}: class id 'x' is not one of the 5 classes (0-4)",
      f"{text}:2: {ids[1]}: class id '7' is not one of the 5 classes (0-4)",
      f"{text}:3: image id 'train-99999' is not a training image of this dataset",
      f"{text}:4: image id '{ids[0]}' is listed twice"]

  text.write_text('\n'.join(good) + '\n')  # ids[0] and ids[1] have no line
  with pytest.raises(sources.DataError, match=rf'{text}: no image-level labels for 2 '
                     rf"image\(s\) of the weak set, e.g. \['{ids[0]}', '{ids[1]}'\]"):
    factory.make_weak_source(_data_config(idx_dir, image_labels=str(text)))

  npy = tmp_path / 'cls_labels.npy'
  np.save(npy, {**{i: np.zeros(4) for i in ids}, ids[3]: np.array([1, 0, 2])})
  with pytest.raises(sources.DataError, match=rf'{npy}: {ids[3]}: expected 4 flags of 0 or 1'):
    factory.make_weak_source(_data_config(idx_dir, image_labels=str(npy)))
  with pytest.raises(sources.DataError, match='nowhere.txt: image-level label file does not'):
    factory.make_weak_source(_data_config(idx_dir, image_labels=str(tmp_path / 'nowhere.txt')))


def test_pseudo_label_pngs_become_the_masks_of_the_unlabelled_stream(idx_dir, tmp_path):
  cfg = _data_config(idx_dir, pseudo_labels=str(tmp_path), batch_size_unlabelled=8,
                     batch_size_labelled=2)
  ids = sources.example_ids(factory.make_source(cfg, 'train_unlabelled'))
  with pytest.raises(sources.DataError, match=(
      rf'{tmp_path}: no pseudo-label PNG for 8 image\(s\) of the weak set, e.g. '
      rf'{tmp_path}/{ids[0]}.png; write them with --mode=pseudo_labels')):
    pipeline.make_train_streams(cfg)
  for k, image_id in enumerate(ids):
    labels = np.full((64, 64), 255, np.uint8)
    labels[:8] = k % 5  # the top rows say which image it is
    Image.fromarray(labels).save(weak.pseudo_label_path(str(tmp_path), image_id))
  streams = pipeline.make_train_streams(cfg)
  batch = next(streams.unlabelled)
  streams.close()
  assert batch['mask'].shape == (8, 64, 64) and batch['image'].shape == (8, 64, 64, 3)
  # Every image of the epoch once, with its own PNG (crop of 64 = whole, flips keep rows).
  assert sorted(batch['mask'][:, 0, 0].tolist()) == sorted(k % 5 for k in range(8))
  assert np.all(batch['mask'][:, 8:] == 255)


# --------------------------------------------------------------------------------------
# IRN's CAM network, the authors' classifier (weak.classifier='irn').


def test_irn_classifier_trains_only_stages_3_4_and_g_c_with_frozen_batch_norm():
  config = defaults.base_config('fashion5')
  config.model = models.tiny_model_config(5)
  config.model.cpu_conv = 'off'  # compiles faster
  config.weak.classifier_optim.update(frozen_stages=2, weight_decay=1e-2)  # decay shows too
  assert config.weak.classifier == 'irn'  # the paper configs' default
  model = weak_lib.classifier(config)
  mesh = parallel.data_mesh()
  state = classify.create_classifier_state(config, model, mesh)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  logits, z = jax.eval_shape(model.apply, state_lib.variables(state), images)
  # layer4's features at output stride 16 (32 x width channels, no PSP); g_c has no bias.
  assert logits.shape == (2, 4) and z.shape == (2, 2, 2, 32 * config.model.width)
  assert set(state.params['classifier']) == {'kernel'}

  batch = {'image': images, 'targets': jnp.array([[1., 0, 0, 1], [0, 1, 0, 0]])}
  after, _ = jax.jit(classify.make_classifier_step(model))(state, batch)
  for path, before in jax.tree_util.tree_leaves_with_path(state.params):
    module = jax.tree_util.keystr(path[:3])
    changed = not np.array_equal(before, _at(after.params, path))
    frozen = "['trunk']" in module and not any(f"['layer{i}_" in module for i in (3, 4))
    assert changed != frozen, module
  for got, want in zip(jax.tree.leaves(after.batch_stats), jax.tree.leaves(state.batch_stats)):
    np.testing.assert_array_equal(got, want)


def _at(tree, path):
  for entry in path:
    tree = tree[entry.key]
  return tree


# --------------------------------------------------------------------------------------
# The three commands end to end: pretrain_cls -> pseudo_labels -> train with L_w.


def _cli(*args):
  command = [sys.executable, '-m', 'cct_jax.main', *args]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  if result.returncode:
    pytest.fail(f'{" ".join(args)} exited with {result.returncode}:\n{result.stderr[-5000:]}')
  return result


@pytest.fixture(scope='module')
def weak_run(idx_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('weak_run')
  common = ('--config=configs/demo.py:fashion5,smoke', f'--workdir={workdir}',
            f'--config.data.generated.idx_dir={idx_dir}')
  _cli(*common, '--mode=pretrain_cls', '--config.weak.classifier_steps=2',
       '--config.weak.classifier_batch_size=4', '--config.weak.classifier_checkpoint_every=1')
  pseudo = _cli(*common, '--mode=pseudo_labels')
  _cli(*common, f'--config.model.encoder_from={workdir}/classifier',
       f'--config.data.pseudo_labels={workdir}/pseudo_labels/two_crfs')
  return workdir, common, pseudo.stdout


def _smoke_data_config(idx_dir):
  cfg = factory.default_data_config('fashion5')
  # configs/demo.py's smoke sizes: 64 training scenes, the first 16 the labelled pool.
  cfg.generated.update(dict(idx_dir=idx_dir, sizes=dict(train=64, val=8, test=8),
                            labelled_pool=16))
  return cfg


def _weak_ids(idx_dir):
  return sources.example_ids(factory.make_source(_smoke_data_config(idx_dir),
                                                 'train_unlabelled'))


def test_pretrain_pseudo_labels_and_weak_training_run_end_to_end(weak_run, idx_dir):
  workdir, _, printed = weak_run
  classifier = json.loads((workdir / 'classifier' / 'results_val.json').read_text())
  assert classifier['step'] == 2 and 0 <= classifier['label_accuracy'] <= 1
  assert sorted(os.listdir(workdir / 'classifier' / 'checkpoints')) == ['1', '2']

  ids = _weak_ids(idx_dir)
  for kind in ('cam', 'two_crfs'):  # the default rule's folder beside the CAMs'
    names = sorted(os.listdir(workdir / 'pseudo_labels' / kind))
    assert names == sorted(f'{i}.png' for i in ids)
    labels = Image.open(workdir / 'pseudo_labels' / kind / names[0])
    assert labels.mode == 'P' and labels.size == (64, 64)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3, 4, 255}
  scores = json.loads((workdir / 'pseudo_labels' / 'scores.json').read_text())
  assert scores['num_scored'] == scores['num_images'] == len(ids)
  for kind in ('cam', 'two_crfs'):
    assert 0 <= scores[kind]['miou'] <= 1
    assert f"**{100 * scores[kind]['miou']:.1f}**" in printed
    labels = np.stack([np.asarray(Image.open(workdir / 'pseudo_labels' / kind / f'{i}.png'))
                       for i in ids])
    assert scores[kind]['labelled_fraction'] == pytest.approx(np.mean(labels != 255))
    assert scores[kind]['miou_unsure_as_wrong'] <= scores[kind]['miou']
  # image | CAM | raw | after the CRF | truth, one row per image of the first six.
  strip = np.asarray(Image.open(workdir / 'pseudo_labels' / 'strip.png'))
  assert strip.shape == (6 * 64, 5 * 64, 3)
  truth = factory.make_source(_smoke_data_config(idx_dir), 'train_unlabelled',
                              keep_masks=True)[0]
  palette = np.asarray(visualize.palette(), np.uint8).reshape(-1, 3)
  np.testing.assert_array_equal(strip[:64, :64], truth['image'])
  np.testing.assert_array_equal(strip[:64, 4 * 64:], palette[truth['mask']])
  crf_labels = np.asarray(Image.open(workdir / 'pseudo_labels' / 'two_crfs' / f'{ids[0]}.png'))
  np.testing.assert_array_equal(strip[:64, 3 * 64:4 * 64], palette[crf_labels])

  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  steps = [r for r in records if 'loss_weak' in r]
  assert [r['step'] for r in steps] == [1, 2, 3, 4]
  assert all(np.isfinite(r['loss_weak']) and r['loss_weak'] > 0 for r in steps)
  assert steps[-1]['weak_weight'] == pytest.approx(0.4)  # the smoke ramp is over by then
  results = json.loads((workdir / 'results_test.json').read_text())
  assert 0 <= results['miou'] <= 1


def test_pseudo_labels_resume_where_they_stopped(weak_run, idx_dir):
  workdir, common, _ = weak_run
  ids = _weak_ids(idx_dir)
  crf_dir = workdir / 'pseudo_labels' / 'two_crfs'
  before = {i: np.asarray(Image.open(crf_dir / f'{i}.png')) for i in ids[:2]}
  for i in ids[:2]:  # as if the run had stopped before finishing these two
    os.remove(crf_dir / f'{i}.png')
  result = _cli(*common, '--mode=pseudo_labels')
  assert f'{len(ids) - 2} done, 2 to go' in result.stderr
  for i in ids[:2]:
    np.testing.assert_array_equal(np.asarray(Image.open(crf_dir / f'{i}.png')), before[i])


def test_segmentation_training_starts_from_the_pretrained_encoder(weak_run):
  workdir, _, _ = weak_run
  config = defaults.base_config('fashion5')
  config.model = models.tiny_model_config(5)
  config.model.output_stride = 4  # as configs/demo.py
  mesh = parallel.data_mesh()
  model = models.model_from_config(config.model)  # the encoder and main decoder suffice
  state = train_step.create_train_state(config, model, methods.get(config), 4, mesh)
  loaded = state_lib.with_encoder_from(state, str(workdir / 'classifier'), mesh)
  saved = checkpointing.restore_arrays(str(workdir / 'classifier' / 'checkpoints'))
  for got, want in zip(jax.tree.leaves(loaded.params['encoder']),
                       jax.tree.leaves(saved['params']['encoder'])):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree.leaves(loaded.params['main_decoder']),
                       jax.tree.leaves(state.params['main_decoder'])):
    np.testing.assert_array_equal(got, want)
  config.model.output_stride = 8
  config.model.psp_features = 16
  other = models.model_from_config(config.model)
  with pytest.raises(ValueError, match='its encoder does not match config.model'):
    state_lib.with_encoder_from(train_step.create_train_state(config, other, methods.get(config), 4, mesh),
                            str(workdir / 'classifier'), mesh)
