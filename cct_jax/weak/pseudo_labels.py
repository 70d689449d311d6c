"""`--mode=pseudo_labels`: CAM pseudo-labels of the weak set, refined by the dense CRF.

For every image of the weak set (the unlabelled split with its image-level labels), the
classifier of --mode=pretrain_cls (`<workdir>/classifier`) gives CAMs of the classes
present, thresholded into labels (cams.py); the dense CRF (crf.py) then settles the
unsure pixels. Palette PNGs, class ids with 255 for unsure pixels:

  <workdir>/pseudo_labels/cam/<id>.png    the raw thresholded CAMs
  <workdir>/pseudo_labels/crf/<id>.png    after the CRF (weak.use_crf); train on these
  <workdir>/pseudo_labels/scores.json     mIoU of both against the true masks, if any
  <workdir>/pseudo_labels/strip.png       image | CAM | both | true mask, first 6 images

An image is done once its last PNG is written, so a stopped run resumes where it
stopped. Runs in one process.
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from cct_jax import checkpointing, crf, evaluate, models, visualize
from cct_jax.data import factory as data_factory
from cct_jax.data import sources, transforms, voc, weak
from cct_jax.weak import cams, classify

OUTPUT_DIR = 'pseudo_labels'
KINDS = ('cam', 'crf')
STRIP_IMAGES = 6


def normalised_cams(config, model, variables, images, present, valid):
  """The CAMs (B, H, W, F) of the foreground classes, each present class's divided by its
  maximum, absent classes 0 (the classifier's variables; images normalised)."""
  classes = classify.foreground(config)
  kernel = variables['params']['classifier']['kernel']
  cam_fn = lambda x: models.class_activation_maps(model.apply(variables, x)[1], kernel)
  raw = cams.multi_scale_cams(cam_fn, images, config.weak.cam_scales, config.weak.cam_flip)
  return cams.normalise_cams(raw, present[:, classes], valid)


def make_label_fn(config, model):
  """jitted (variables, images, present, valid) -> thresholded CAM labels (B, H, W)."""

  def label(variables, images, present, valid):
    return cams.pseudo_labels(
        normalised_cams(config, model, variables, images, present, valid),
        classify.foreground(config), theta_bg=config.weak.theta_bg,
        theta_fg=config.weak.theta_fg, background_class=config.perturbations.background_class)

  return jax.jit(label)


def _save_png(labels: np.ndarray, path: str) -> None:
  """Written under a temporary name, then renamed: a PNG that exists is complete."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  visualize.label_png(labels, voc.palette()).save(path + '.tmp', format='PNG')
  os.replace(path + '.tmp', path)


class Progress:
  """A progress bar with rate and ETA, logged at most every `every` seconds."""

  def __init__(self, total: int, done: int, every: float = 5.0):
    self.total, self.start_done, self.every = total, done, every
    self.start = self.last = time.perf_counter()

  def update(self, done: int) -> None:
    now = time.perf_counter()
    if now - self.last < self.every and done < self.total:
      return
    self.last = now
    rate = (done - self.start_done) / max(now - self.start, 1e-9)
    eta = int((self.total - done) / max(rate, 1e-9))
    filled = int(30 * done / max(self.total, 1))
    logging.info('pseudo-labels [%s%s] %d/%d %.1f img/s ETA %d:%02d:%02d', '#' * filled,
                 '.' * (30 - filled), done, self.total, rate, eta // 3600, eta // 60 % 60,
                 eta % 60)


def _padded_batch(config, examples: list[dict]) -> dict:
  """Normalised images, padded to data.eval_pad_to (or as they are, one at a time)."""
  pad = tuple(config.data.eval_pad_to) if all(config.data.eval_pad_to) else None
  images, valid = [], []
  for example in examples:
    h, w = example['image'].shape[:2]
    size = pad or (h, w)
    image = transforms.pad_to({'image': example['image']}, *size, config.data.mean)['image']
    images.append(transforms.normalise(image, config.data.mean, config.data.std))
    valid.append(np.pad(np.ones((h, w), bool), ((0, size[0] - h), (0, size[1] - w))))
  return {'image': np.stack(images), 'valid': np.stack(valid),
          'present': np.stack([e['image_labels'] for e in examples])}


def write_pseudo_labels(config, workdir: str) -> dict:
  """Writes the PNGs of every weak image not done yet, then scores all of them."""
  if jax.process_count() > 1:
    raise ValueError('--mode=pseudo_labels runs in one process (it writes files as it goes)')
  source = data_factory.make_weak_source(config.data, keep_masks=True)
  ids = sources.example_ids(source)
  out = os.path.join(workdir, OUTPUT_DIR)
  kinds = KINDS if config.weak.use_crf else KINDS[:1]
  final = os.path.join(out, kinds[-1])
  todo = [i for i, image_id in enumerate(ids)
          if not os.path.isfile(weak.pseudo_label_path(final, image_id))]
  logging.info('pseudo-labels of %d weak images: %d done, %d to go, into %s', len(ids),
               len(ids) - len(todo), len(todo), out)
  model = classify.classifier(config)
  saved = checkpointing.restore_arrays(
      os.path.join(workdir, classify.CLASSIFIER_DIR, 'checkpoints'))
  variables = {'params': saved['params'], 'batch_stats': saved['batch_stats']}
  if todo:
    label_fn = make_label_fn(config, model)
    batch_size = config.data.eval_batch_size if all(config.data.eval_pad_to) else 1
    progress = Progress(len(ids), len(ids) - len(todo))
    for start in range(0, len(todo), batch_size):
      examples = [source[i] for i in todo[start:start + batch_size]]
      batch = _padded_batch(config, examples)
      labels = np.asarray(label_fn(variables, batch['image'], batch['present'],
                                   batch['valid']))
      for example, label in zip(examples, labels):
        h, w = example['image'].shape[:2]
        label = label[:h, :w]
        _save_png(label, weak.pseudo_label_path(os.path.join(out, 'cam'), example['id']))
        if config.weak.use_crf:
          refined = crf.refine_labels(example['image'], label, config.model.num_classes,
                                      config.weak.crf)
          _save_png(np.asarray(refined), weak.pseudo_label_path(final, example['id']))
      progress.update(len(ids) - len(todo) + start + len(examples))
  strip = save_strip(config, model, variables, source, out, kinds)
  logging.info('image | CAM | pseudo-labels (%s) | truth of the first weak images: %s',
               ' | '.join(kinds), strip)
  return score_pseudo_labels(config, source, out, kinds)


def cam_overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
  """The image darkened and tinted red where `heat` (H, W, in [0, 1]) is high."""
  red = np.array([255.0, 0.0, 0.0])
  alpha = 0.7 * heat[..., None]
  return ((1 - alpha) * 0.6 * image + alpha * red).round().astype(np.uint8)


def save_strip(config, model, variables, source, out: str, kinds,
               count: int = STRIP_IMAGES) -> str:
  """One row per weak image (the first `count`): image | its strongest CAM | the
  pseudo-labels of each kind | the true mask where there is one, to `<out>/strip.png`."""
  examples = [source[i] for i in range(min(count, len(source)))]
  batch = _padded_batch(config, examples)
  heat = np.asarray(jax.jit(functools.partial(normalised_cams, config, model))(
      variables, batch['image'], batch['present'], batch['valid'])).max(axis=-1)
  colours = np.asarray(voc.palette(), np.uint8).reshape(-1, 3)
  rows = []
  for example, example_heat in zip(examples, heat):
    h, w = example['image'].shape[:2]
    cells = [example['image'], cam_overlay(example['image'], example_heat[:h, :w])]
    cells += [colours[np.asarray(Image.open(weak.pseudo_label_path(
        os.path.join(out, kind), example['id'])))] for kind in kinds]
    if 'mask' in example:
      cells.append(colours[example['mask']])
    rows.append(np.concatenate(cells, axis=1))
  width = max(row.shape[1] for row in rows)  # images of several sizes: white on the right
  rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255)
          for row in rows]
  path = os.path.join(out, 'strip.png')
  Image.fromarray(np.concatenate(rows, axis=0)).save(path)
  return path


def score_pseudo_labels(config, source, out: str, kinds) -> dict:
  """mIoU of each kind of pseudo-label against the masks of the weak images that have
  them (unsure pixels count as misses: a CRF that fills them gains); printed, and written
  to `<out>/scores.json`."""
  num_classes = config.model.num_classes
  confusion = {kind: np.zeros((num_classes + 1, num_classes + 1), np.int64) for kind in kinds}
  scored = 0
  for index in range(len(source)):
    example = source[index]
    if 'mask' not in example:
      continue
    scored += 1
    for kind in kinds:
      path = weak.pseudo_label_path(os.path.join(out, kind), example['id'])
      labels = np.asarray(Image.open(path), np.int32)
      # 255 becomes an extra predicted class: it lowers the recall of every class.
      predicted = np.where(labels == 255, num_classes, labels)
      confusion[kind] += np.asarray(evaluate.confusion_matrix(
          jnp.asarray(predicted), jnp.asarray(example['mask']), num_classes + 1))
  names = data_factory.class_names(config.data)
  results = {'num_images': len(source), 'num_scored': scored}
  for kind in kinds:
    kind_scores = evaluate.scores(confusion[kind][:num_classes, :num_classes], names)
    kind_scores['unsure_fraction'] = float(
        confusion[kind][:, num_classes].sum() / max(confusion[kind].sum(), 1))
    results[kind] = kind_scores
  path = os.path.join(out, 'scores.json')
  with open(path, 'w') as f:
    json.dump(results, f, indent=2)
  print(format_scores(results, kinds) + f'\n(written to {path})')
  return results


def format_scores(results: dict, kinds) -> str:
  lines = [f'pseudo-label IoU against the true masks of {results["num_scored"]} of '
           f'{results["num_images"]} weak images', '| class | ' + ' | '.join(kinds) + ' |',
           '|---|' + '---|' * len(kinds)]
  for name in results[kinds[0]]['per_class_iou']:
    cells = [results[k]['per_class_iou'][name] for k in kinds]
    lines.append(f'| {name} | ' + ' | '.join(
        'n/a' if v is None else f'{100 * v:.1f}' for v in cells) + ' |')
  lines.append('| **mIoU** | ' + ' | '.join(
      f'**{100 * results[k]["miou"]:.1f}**' for k in kinds) + ' |')
  lines.append('| unsure pixels % | ' + ' | '.join(
      f'{100 * results[k]["unsure_fraction"]:.1f}' for k in kinds) + ' |')
  return '\n'.join(lines)
