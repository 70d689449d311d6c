"""`--mode=pseudo_labels`: CAM pseudo-labels of the weak set, refined by the dense CRF.

For every image of the weak set (the unlabelled split with its image-level labels), the
classifier of --mode=pretrain_cls (`<workdir>/classifier`) gives CAMs of the classes
present, thresholded into labels (cams.py); `weak.pseudo_label_rule` says how the dense
CRF (crf.py) turns them into the labels L_w trains on. Palette PNGs, class ids with 255
for unsure pixels:

  <workdir>/pseudo_labels/cam/<id>.png       the thresholded CAMs (every rule)
  <workdir>/pseudo_labels/two_crfs/<id>.png  the authors' two CRFs (the default rule)
  <workdir>/pseudo_labels/one_crf/<id>.png   one CRF over all classes ('one_crf')
  <workdir>/pseudo_labels/scores.json        mIoU of each kind written so far against the
                                             true masks, if any
  <workdir>/pseudo_labels/strip.png          image | CAM | each kind | true mask, first 6

An image is done once its last PNG is written, so a stopped run resumes where it
stopped; another rule in the same workdir writes its own folder from the same CAMs. Runs
in one process.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from cct_jax import checkpointing, crf, errors, evaluate, models, progress, visualize
from cct_jax.data import factory as data_factory
from cct_jax.data import sources, transforms, weak
from cct_jax.labels import IGNORE_INDEX
from cct_jax.weak import CLASSIFIER_DIR, cams, classifier, foreground_of

OUTPUT_DIR = 'pseudo_labels'
RULES = ('two_crfs', 'one_crf', 'cam')
KINDS = ('cam', 'one_crf', 'two_crfs')  # the folders, in the order they are shown
STRIP_IMAGES = 6


def normalised_cams(config, model, variables, images, present, valid):
  """The CAMs (B, H, W, F) of the foreground classes, each present class's divided by its
  maximum, absent classes 0 (the classifier's variables; images normalised)."""
  classes = foreground_of(config)
  kernel = variables['params']['classifier']['kernel']
  cam_fn = lambda x: models.class_activation_maps(model.apply(variables, x)[1], kernel)
  raw = cams.multi_scale_cams(cam_fn, images, config.weak.cam_scales, config.weak.cam_flip)
  return cams.normalise_cams(raw, present[:, classes], valid)


def make_label_fn(config, model):
  """jitted (variables, images, present, valid) -> dict of (B, H, W) labels: 'cam', the
  two thresholds (255 between them); 'fg' and 'bg', background at or below theta_fg and
  theta_bg alone (the unaries of the two CRFs)."""
  foreground = foreground_of(config)
  background = config.perturbations.background_class
  theta_bg, theta_fg = config.weak.theta_bg, config.weak.theta_fg

  def label(variables, images, present, valid):
    normalised = normalised_cams(config, model, variables, images, present, valid)
    return dict(
        cam=cams.pseudo_labels(normalised, foreground, theta_bg=theta_bg, theta_fg=theta_fg,
                               background_class=background),
        fg=cams.confident_labels(normalised, foreground, theta=theta_fg,
                                 background_class=background),
        bg=cams.confident_labels(normalised, foreground, theta=theta_bg,
                                 background_class=background))

  return jax.jit(label)


def agreed_labels(fg_labels: np.ndarray, bg_labels: np.ndarray,
                  background_class: int) -> np.ndarray:
  """The two CRFs' labels combined as the authors' pipeline does
  (github.com/yassouali/CCT, pseudo_labels/cam_to_pseudo_labels.py, from IRN): the class
  the CRF from theta_fg gives where it sees an object, background where both CRFs say
  background, IGNORE_INDEX where only the CRF from theta_bg sees an object (the band the
  thresholds leave unsure)."""
  unsure_or_background = np.where(bg_labels == background_class, background_class,
                                  IGNORE_INDEX)
  return np.where(fg_labels == background_class, unsure_or_background, fg_labels)


def two_crf_labels(image: np.ndarray, fg_labels: np.ndarray, bg_labels: np.ndarray,
                   classes, background_class: int, crf_config) -> np.ndarray:
  """The authors' pseudo-labels of one image: a CRF from the labels at theta_fg and one
  from those at theta_bg, each over `classes` (the present ones plus background), then
  `agreed_labels`."""
  fg_refined, bg_refined = crf.refine_among(image, np.stack([fg_labels, bg_labels]),
                                            classes, crf_config)
  return agreed_labels(fg_refined, bg_refined, background_class)


def refined_labels(config, example: dict, labels: dict) -> np.ndarray:
  """The pseudo-labels of `weak.pseudo_label_rule` ('one_crf' or 'two_crfs') of one image
  from its `make_label_fn` labels (cropped to the image)."""
  if config.weak.pseudo_label_rule == 'one_crf':
    return np.asarray(crf.refine_labels(example['image'], labels['cam'],
                                        config.model.num_classes, config.weak.crf))
  background = config.perturbations.background_class
  present = [c for c in foreground_of(config) if example['image_labels'][c]]
  return two_crf_labels(example['image'], labels['fg'], labels['bg'], [background] + present,
                        background, config.weak.crf)


def _save_png(labels: np.ndarray, path: str) -> None:
  """Written under a temporary name, then renamed: a PNG that exists is complete."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  visualize.label_png(labels, visualize.palette()).save(path + '.tmp', format='PNG')
  os.replace(path + '.tmp', path)


def _padded_batch(config, examples: list[dict]) -> dict:
  """Normalised images, padded at the bottom and right to the batch's largest size."""
  size = tuple(max(e['image'].shape[axis] for e in examples) for axis in (0, 1))
  images, valid = [], []
  for example in examples:
    h, w = example['image'].shape[:2]
    image = transforms.pad_to({'image': example['image']}, *size, config.data.mean)['image']
    images.append(transforms.normalise(image, config.data.mean, config.data.std))
    valid.append(np.pad(np.ones((h, w), bool), ((0, size[0] - h), (0, size[1] - w))))
  return {'image': np.stack(images), 'valid': np.stack(valid),
          'present': np.stack([e['image_labels'] for e in examples])}


def write_pseudo_labels(config, workdir: str) -> dict:
  """Writes the PNGs of every weak image not done yet, then scores every kind written."""
  rule = config.weak.pseudo_label_rule
  if rule not in RULES:
    raise errors.UserError(f'weak.pseudo_label_rule must be one of {RULES}, got {rule!r}')
  if jax.process_count() > 1:
    raise errors.UserError('--mode=pseudo_labels runs in one process (it writes files as it goes)')
  source = data_factory.make_weak_source(config.data, keep_masks=True)
  ids = sources.example_ids(source)
  out = os.path.join(workdir, OUTPUT_DIR)
  final = os.path.join(out, rule)
  todo = [i for i, image_id in enumerate(ids)
          if not os.path.isfile(weak.pseudo_label_path(final, image_id))]
  logging.info('pseudo-labels (%s) of %d weak images: %d done, %d to go, into %s', rule,
               len(ids), len(ids) - len(todo), len(todo), out)
  model = classifier(config)
  saved = checkpointing.restore_arrays(
      os.path.join(workdir, CLASSIFIER_DIR, 'checkpoints'))
  variables = {'params': saved['params'], 'batch_stats': saved['batch_stats']}
  if todo:
    label_fn = make_label_fn(config, model)
    batch_size = config.data.eval_batch_size
    reporter = progress.Reporter(len(ids), unit='images', what=f'pseudo-labels ({rule})',
                                 done=len(ids) - len(todo))
    for (examples, batch), waited in progress.timed(_batches(config, source, todo,
                                                             batch_size)):
      labels = jax.device_get(label_fn(variables, batch['image'], batch['present'],
                                       batch['valid']))
      for index, example in enumerate(examples):
        h, w = example['image'].shape[:2]
        own = {kind: image_labels[index, :h, :w] for kind, image_labels in labels.items()}
        _save_png(own['cam'], weak.pseudo_label_path(os.path.join(out, 'cam'), example['id']))
        if rule != 'cam':
          _save_png(refined_labels(config, example, own),
                    weak.pseudo_label_path(final, example['id']))
      reporter.update(len(examples), waited_s=waited)
    reporter.done()
  kinds = written_kinds(out, ids)
  strip = save_strip(config, model, variables, source, out, kinds)
  logging.info('image | CAM | pseudo-labels (%s) | truth of the first weak images: %s',
               ' | '.join(kinds), strip)
  return score_pseudo_labels(config, source, out, kinds)


def _batches(config, source, indices, batch_size: int):
  """(examples, padded batch) of `indices` of `source`, `batch_size` at a time."""
  for start in range(0, len(indices), batch_size):
    examples = [source[i] for i in indices[start:start + batch_size]]
    yield examples, _padded_batch(config, examples)


def written_kinds(out: str, ids) -> list[str]:
  """The kinds of pseudo-labels with a PNG for every weak image in `out`."""
  return [kind for kind in KINDS if all(
      os.path.isfile(weak.pseudo_label_path(os.path.join(out, kind), i)) for i in ids)]


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
  colours = np.asarray(visualize.palette(), np.uint8).reshape(-1, 3)
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
  """Each kind of pseudo-label against the masks of the weak images that have them: mIoU
  over the pixels it labels (what L_w learns from), mIoU with its unsure pixels counted
  as wrong, and the share of pixels it labels; printed, and written to
  `<out>/scores.json`."""
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
      # 255 becomes an extra predicted class, the last column.
      predicted = np.where(labels == IGNORE_INDEX, num_classes, labels)
      confusion[kind] += np.asarray(evaluate.confusion_matrix(
          jnp.asarray(predicted), jnp.asarray(example['mask']), num_classes + 1))
  names = list(data_factory.class_names(config.data))
  results = {'num_images': len(source), 'num_scored': scored}
  for kind in kinds:
    kind_scores = evaluate.scores(confusion[kind][:num_classes, :num_classes], names)
    # With the unsure column kept, each class's IoU counts its unsure pixels as misses.
    with_unsure = evaluate.scores(confusion[kind], names + ['unsure'])['per_class_iou']
    kind_scores['miou_unsure_as_wrong'] = float(np.mean(
        [v for name, v in with_unsure.items() if name != 'unsure' and v is not None]))
    kind_scores['labelled_fraction'] = float(
        1 - confusion[kind][:, num_classes].sum() / max(confusion[kind].sum(), 1))
    results[kind] = kind_scores
  path = os.path.join(out, 'scores.json')
  with open(path, 'w') as f:
    json.dump(results, f, indent=2)
  print(format_scores(results, kinds) + f'\n(written to {path})')
  return results


def format_scores(results: dict, kinds) -> str:
  lines = [f'pseudo-label IoU against the true masks of {results["num_scored"]} of '
           f'{results["num_images"]} weak images, over the pixels each labels',
           '| class | ' + ' | '.join(kinds) + ' |', '|---|' + '---|' * len(kinds)]
  for name in results[kinds[0]]['per_class_iou']:
    cells = [results[k]['per_class_iou'][name] for k in kinds]
    lines.append(f'| {name} | ' + ' | '.join(
        'n/a' if v is None else f'{100 * v:.1f}' for v in cells) + ' |')
  rows = (('**mIoU**', 'miou'), ('mIoU, unsure pixels as wrong', 'miou_unsure_as_wrong'),
          ('labelled pixels %', 'labelled_fraction'))
  for title, key in rows:
    cells = [f'{100 * results[k][key]:.1f}' for k in kinds]
    if key == 'miou':
      cells = [f'**{cell}**' for cell in cells]
    lines.append(f'| {title} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
