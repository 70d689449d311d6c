"""Transforms (paper sec. 4.1) and the grain pipelines: determinism, workers, state, processes."""

import json

from absl import flags
import numpy as np
import pytest

import fakes

from cct_jax import data
from cct_jax.data import factory, pipeline, transforms


def _tex5(**overrides):
  cfg = data.default_data_config('tex5')
  cfg.generated.update(dict(sizes=dict(train=40, val=7, test=5), labelled_pool=8))
  cfg.update(dict(num_labelled=4, batch_size_labelled=4, batch_size_unlabelled=4,
                  crop_size=48))
  cfg.update(overrides)
  return cfg


def _striped_example(height, width):
  """An image whose red channel is its mask's class: alignment survives any transform."""
  mask = (np.arange(width)[None, :] // 7 % 3).repeat(height, 0).astype(np.int32)
  mask[:, :3] = data.IGNORE_INDEX
  image = np.zeros((height, width, 3), np.uint8)
  image[..., 0] = np.where(mask == data.IGNORE_INDEX, 250, mask * 80)
  return {'image': image, 'mask': mask, 'id': 'striped'}


def _classes_from_image(image, mean=transforms.IMAGENET_MEAN, std=transforms.IMAGENET_STD):
  red = np.round((image[..., 0] * std[0] + mean[0]) * 255)
  return np.where(red > 200, data.IGNORE_INDEX, np.round(red / 80)).astype(np.int32)


def test_scale_crop_flip_keeps_image_and_mask_aligned():
  example = _striped_example(375, 500)
  for seed in range(6):
    out = transforms.scale_crop_flip(example, np.random.default_rng(seed), crop_size=320,
                                     base_size=400)
    assert out['image'].shape == (320, 320, 3) and out['image'].dtype == np.float32
    assert out['mask'].shape == (320, 320) and out['mask'].dtype == np.int32
    inside = out['mask'] != data.IGNORE_INDEX
    # Bicubic blurs the stripes' edges; away from them the image still gives the mask.
    agree = _classes_from_image(out['image'])[inside] == out['mask'][inside]
    assert agree.mean() > 0.9


def test_rescale_range_and_padding():
  example = _striped_example(375, 500)
  sides = {max(transforms.rescale_long_side(example, s)['image'].shape) for s in (200, 800)}
  assert sides == {200, 800}
  assert transforms.rescale_long_side(example, 200)['image'].shape == (150, 200, 3)

  small = _striped_example(20, 30)
  out = transforms.scale_crop_flip(small, np.random.default_rng(0), crop_size=64,
                                   flip=False)
  np.testing.assert_array_equal(out['mask'][20:], data.IGNORE_INDEX)
  np.testing.assert_array_equal(out['mask'][:, 30:], data.IGNORE_INDEX)
  np.testing.assert_allclose(out['image'][20:], 0.0, atol=0.01)  # The mean colour.


def test_eval_transform_keeps_or_resizes_the_whole_image():
  example = _striped_example(30, 40)
  out = transforms.eval_transform(example)
  assert out['image'].shape == (30, 40, 3)
  np.testing.assert_array_equal(out['mask'], example['mask'])
  resized = transforms.eval_transform(example, size=(15, 20))
  assert resized['image'].shape == (15, 20, 3) and resized['mask'].shape == (15, 20)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for part_x, part_y in zip(x, y):
      assert part_x.keys() == part_y.keys()
      for key in part_x:
        np.testing.assert_array_equal(part_x[key], part_y[key])


def test_workers_give_the_same_batches():
  flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags; app.run is not here.
  cfg = _tex5()
  ds = pipeline.train_dataset(data.make_source(cfg, 'train_labelled'),
                              data.train_transform(cfg), batch_size=4, seed=0)
  in_process = iter(pipeline.prefetched(ds))
  with_workers = iter(pipeline.prefetched(ds, num_workers=2))
  try:
    for _ in range(3):
      a, b = next(in_process), next(with_workers)
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['mask'], b['mask'])
  finally:
    with_workers.close()


def test_state_restores_the_streams_exactly():
  streams = pipeline.make_train_streams(_tex5())
  _take(streams, 3)
  state = json.loads(json.dumps(streams.get_state()))  # As a checkpoint would hold it.
  expected = _take(streams, 4)
  restored = pipeline.make_train_streams(_tex5())
  restored.set_state(state)
  _assert_same_batches(_take(restored, 4), expected)
  # Or, without iterator state, from the step alone (any number of workers).
  _assert_same_batches(_take(pipeline.make_train_streams(_tex5(), start_step=3), 4), expected)


def test_each_epoch_is_reshuffled_and_reaugmented():
  source = [{'index': np.int64(i)} for i in range(4)]
  draw = lambda example, rng: {**example, 'draw': rng.random()}
  epochs = pipeline.train_dataset(source, draw, batch_size=4, seed=0)  # A batch per epoch.
  orders = [tuple(epochs[e]['index']) for e in range(4)]
  assert all(sorted(order) == [0, 1, 2, 3] for order in orders)
  assert len(set(orders)) > 1
  draws = {(int(i), float(d)) for e in range(4) for i, d in zip(epochs[e]['index'],
                                                                epochs[e]['draw'])}
  assert len(draws) == 16  # Every example is augmented afresh in every epoch.


def test_global_batch_does_not_depend_on_the_process_count():
  source = data.make_source(_tex5(), 'train_unlabelled')
  transform = data.train_transform(_tex5())
  single = pipeline.train_dataset(source, transform, batch_size=4, seed=7)
  halves = [pipeline.train_dataset(source, transform, batch_size=2, seed=7,
                                   process_index=p, process_count=2) for p in range(2)]
  for step in range(3):
    together = np.concatenate([halves[0][step]['image'], halves[1][step]['image']])
    key = lambda images: sorted(i.tobytes() for i in images)  # Order within may differ.
    assert key(together) == key(single[step]['image'])


def test_batch_must_divide_over_devices():
  assert pipeline.per_process_batch_size(8, device_count=4, process_count=2) == 4
  with pytest.raises(ValueError, match='data.batch_size_labelled 10 does not divide over '
                                       '4 devices.*e.g. 8'):
    pipeline.make_train_streams(_tex5(batch_size_labelled=10), device_count=4)


def test_eval_batches_cover_every_example_once():
  cfg = _tex5(eval_batch_size=3)
  n = len(data.make_source(cfg, 'val'))  # 7: two full batches and one of 1 + 2 blanks.
  batches = list(pipeline.make_eval_dataset(cfg, 'val'))
  assert [b['valid'].tolist() for b in batches] == [[True] * 3] * 2 + [[True, False, False]]
  assert (batches[-1]['mask'][1:] == data.IGNORE_INDEX).all()
  assert all((b['size'][b['valid']] == 64).all() for b in batches)

  # Two processes of 2 devices: global batches of 3 x 4, each process loading half.
  per_process = [list(pipeline.make_eval_dataset(cfg, 'val', device_count=4, process_index=p,
                                             process_count=2)) for p in range(2)]
  assert len(per_process[0]) == len(per_process[1]) == 1  # Same step count everywhere.
  assert per_process[0][0]['image'].shape == (6, 64, 64, 3)
  valid = [img for ds in per_process for b in ds for img, v in zip(b['image'], b['valid'])
           if v]
  single = [img for b in batches for img, v in zip(b['image'], b['valid']) if v]
  assert len(valid) == n
  assert sorted(i.tobytes() for i in valid) == sorted(i.tobytes() for i in single)


def test_images_of_many_sizes_fill_every_batch_but_the_last_in_a_few_canvases(tmp_path):
  root = fakes.write_voc_folder(str(tmp_path), num_train=2, num_val=21)
  cfg = data.default_data_config('voc')
  cfg.update(root=root, eval_batch_size=2, eval_bucket=32)
  batches = list(pipeline.make_eval_dataset(cfg, 'val', device_count=2))
  assert [int(b['valid'].sum()) for b in batches] == [4] * 5 + [1]
  canvases = [b['image'].shape[1:3] for b in batches]
  assert canvases == sorted(canvases) and len(set(canvases)) <= 3
  assert all(side in (64, 96, 120) for canvas in canvases for side in canvas)
  for batch in batches:
    for row in np.flatnonzero(batch['valid']):
      h, w = batch['size'][row]
      assert max(h, w) <= batch['image'].shape[1]
      assert (batch['mask'][row, h:] == data.IGNORE_INDEX).all()
      assert (batch['mask'][row, :, w:] == data.IGNORE_INDEX).all()
      assert (batch['image'][row, h:] == 0).all()
  sizes = sorted(tuple(b['size'][r]) for b in batches for r in np.flatnonzero(b['valid']))
  assert sizes == sorted(fakes.distinct_sizes(23)[2:])


def test_worker_and_thread_counts_follow_the_host_unless_set():
  auto = factory.AUTO
  assert pipeline.input_workers(auto, auto, cores=2) == (0, 2)
  assert pipeline.input_workers(auto, auto, cores=4) == (0, 2)
  assert pipeline.input_workers(auto, auto, cores=16) == (4, 2)
  assert pipeline.input_workers(auto, auto, cores=224) == (16, 2)  # A TPU v4 host.
  assert pipeline.input_workers(3, 1, cores=224) == (3, 1)
  assert pipeline.input_workers(auto, 5, cores=2) == (0, 5)
  assert pipeline.input_workers(auto, auto) == pipeline.input_workers(
      auto, auto, cores=pipeline.usable_cores())
  assert data.default_data_config('voc').num_workers == auto


def test_labelled_replay_repeats_one_pass_per_epoch_and_resumes_exactly():
  source = [{'index': np.int64(i)} for i in range(5)]
  draw = lambda example, rng: {**example, 'draw': rng.random()}

  def batch(ds, step):
    drawn = ds[step]
    return tuple(drawn['index']), tuple(drawn['draw'])

  # 5 images in batches of 2: a pass is 3 batches, the last filled from the pass's start;
  # an epoch (a pass over the unlabelled set) is 7 steps.
  replayed = pipeline.train_dataset(source, draw, batch_size=2, seed=0, epoch_steps=7)
  steps = [batch(replayed, s) for s in range(14)]
  assert all(steps[s] == steps[s + 3] for s in (0, 1, 2, 3, 7, 8, 9, 10))
  assert set(steps[7:10]).isdisjoint(steps[:7])  # A new epoch, a new pass.
  for epoch in (0, 7):  # Each image once, then the fill.
    assert sorted([i for s in steps[epoch:epoch + 3] for i in s[0]][:5]) == [0, 1, 2, 3, 4]
  resumed = pipeline.train_dataset(source, draw, batch_size=2, seed=0, epoch_steps=7,
                                   start_step=5)
  assert [batch(resumed, k) for k in range(5)] == steps[5:10]
  halves = [pipeline.train_dataset(source, draw, batch_size=1, seed=0, epoch_steps=7,
                                   process_index=p, process_count=2) for p in range(2)]
  assert [batch(halves[0], s)[0] + batch(halves[1], s)[0] for s in range(5, 10)] == [
      s[0] for s in steps[5:10]]

  fresh = pipeline.train_dataset(source, draw, batch_size=2, seed=0)
  assert all(batch(fresh, s) != batch(fresh, s + 3) for s in range(4))

  # The config: on for the paper's datasets. 8 unlabelled scenes in batches of 4 make
  # 2-step epochs, 4 labelled ones a 1-batch pass.
  assert data.default_data_config('voc').labelled_replay
  assert data.default_data_config('cityscapes').labelled_replay
  assert not data.default_data_config('tex5').labelled_replay
  cfg = _tex5(labelled_replay=True, crop_size=32, prefetch=2)
  cfg.generated.update(dict(sizes=dict(train=16, val=7, test=5), image_size=32))
  images = [labelled['image'] for labelled, _ in _take(pipeline.make_train_streams(cfg), 3)]
  np.testing.assert_array_equal(images[0], images[1])
  assert not np.array_equal(images[2], images[1])
