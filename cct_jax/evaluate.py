"""Evaluation (paper sec. 4.1 and App. F): confusion matrix over a whole split, mIoU, per-class
IoU and pixel accuracy; whole-image, sliding-window and multi-scale + flip inference.

The confusion matrix is summed over every pixel of the split before any division (as
scenic's (value, normaliser) metrics), so ignore pixels and padded batches are exact.
"""

import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from cct_jax import parallel, progress
from cct_jax.labels import IGNORE_INDEX
from cct_jax.models import padding

# logits_fn(images (B, H, W, 3) with H, W multiples of 8, sizes (B, 2)) -> logits
# (B, H, W, C); sizes: each image's own height and width at the top left of its padded row.
LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def confusion_matrix(predictions: jax.Array, labels: jax.Array, num_classes: int,
                     valid: jax.Array | None = None) -> jax.Array:
  """(C, C) counts, rows = true class, columns = predicted; ignore pixels do not count."""
  keep = labels != IGNORE_INDEX
  if valid is not None:
    keep &= valid.reshape(valid.shape + (1,) * (labels.ndim - valid.ndim)).astype(bool)
  index = jnp.where(keep, labels * num_classes + predictions, num_classes * num_classes)
  counts = jnp.bincount(index.ravel(), length=num_classes * num_classes + 1)
  return counts[:-1].reshape(num_classes, num_classes)


def scores(confusion: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
  """mIoU over the classes that occur (in labels or predictions), per-class IoU, pixel
  accuracy, mean class accuracy (recall averaged over the classes that occur in the
  labels), and the confusion matrix itself (rows: true class, columns: predicted)."""
  counts = np.asarray(confusion, np.int64)
  confusion = counts.astype(np.float64)
  true_positive = np.diag(confusion)
  labelled = confusion.sum(1)
  union = confusion.sum(0) + labelled - true_positive
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = np.where(union > 0, true_positive / union, np.nan)
    recall = np.where(labelled > 0, true_positive / labelled, np.nan)
  names = list(class_names) if class_names else [str(i) for i in range(len(iou))]
  return dict(
      miou=float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
      pixel_accuracy=float(true_positive.sum() / max(confusion.sum(), 1.0)),
      mean_class_accuracy=float(np.nanmean(recall)) if np.any(labelled > 0) else 0.0,
      per_class_iou={name: (None if np.isnan(v) else float(v)) for name, v in zip(names, iou)},
      confusion_matrix=counts.tolist(),
  )


def format_table(results: dict) -> str:
  lines = ['| class | IoU |', '|---|---|']
  for name, value in results['per_class_iou'].items():
    lines.append(f"| {name} | {'n/a' if value is None else f'{100 * value:.1f}'} |")
  lines.append(f"| **mIoU** | **{100 * results['miou']:.1f}** |")
  lines.append(f"| pixel accuracy | {100 * results['pixel_accuracy']:.1f} |")
  lines.append(f"| mean class accuracy | {100 * results['mean_class_accuracy']:.1f} |")
  return '\n'.join(lines)


def pad_to_multiple(images: jax.Array, multiple: int = 8) -> jax.Array:
  """Zero padding at the bottom and right: zero is the mean colour after normalisation."""
  _, h, w, _ = images.shape
  pad_h, pad_w = -h % multiple, -w % multiple
  return jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


def full_sizes(images: jax.Array) -> jax.Array:
  """(B, 2) sizes of a batch whose images fill it."""
  return jnp.broadcast_to(jnp.array(images.shape[1:3], jnp.int32), (images.shape[0], 2))


def whole_image_logits(logits_fn: LogitsFn, images: jax.Array, sizes: jax.Array) -> jax.Array:
  """Logits of the whole image, padded to a multiple of 8 and cropped back."""
  h, w = images.shape[1:3]
  return logits_fn(pad_to_multiple(images), sizes)[:, :h, :w]


def whole_image_probs(logits_fn: LogitsFn, images: jax.Array, sizes: jax.Array) -> jax.Array:
  """Softmax of `whole_image_logits`."""
  return jax.nn.softmax(whole_image_logits(logits_fn, images, sizes), axis=-1)


def sliding_window_logits(logits_fn: LogitsFn, images: jax.Array, sizes: jax.Array, crop: int,
                          overlap: float = 1 / 3) -> jax.Array:
  """Logits averaged over crop x crop windows with `overlap`, for large images (logits,
  not probabilities, as the scales of `multi_scale_logits` and the authors' code)."""
  b, h, w, _ = images.shape
  if h <= crop and w <= crop:
    return whole_image_logits(logits_fn, images, sizes)
  stride = max(1, int(crop * (1 - overlap)))
  starts = lambda size: sorted({min(i * stride, max(size - crop, 0))
                                for i in range(math.ceil(max(size - crop, 0) / stride) + 1)})
  total, counts = None, jnp.zeros((1, h, w, 1))
  for y in starts(h):
    for x in starts(w):
      window = images[:, y:y + crop, x:x + crop]
      # The part of each image inside the window (at least a pixel: a window of padding
      # alone is predicted and then not scored).
      inside = jnp.clip(sizes - jnp.array([y, x]), 1, jnp.array(window.shape[1:3]))
      logits = whole_image_logits(logits_fn, window, inside)
      pad = ((0, 0), (y, h - y - logits.shape[1]), (x, w - x - logits.shape[2]), (0, 0))
      total = jnp.pad(logits, pad) if total is None else total + jnp.pad(logits, pad)
      counts = counts + jnp.pad(jnp.ones((1,) + logits.shape[1:3] + (1,)), pad)
  return total / counts


def sliding_window_probs(logits_fn: LogitsFn, images: jax.Array, sizes: jax.Array, crop: int,
                         overlap: float = 1 / 3) -> jax.Array:
  """Softmax of `sliding_window_logits`."""
  return jax.nn.softmax(sliding_window_logits(logits_fn, images, sizes, crop, overlap), axis=-1)


def flip_inside(x: jax.Array, widths: jax.Array) -> jax.Array:
  """Each row's first `widths[b]` columns mirrored, the padding after them left in place,
  so a mirrored image stays at the top left of its padded row."""
  column = jnp.arange(x.shape[2])[None, :]
  source = jnp.where(column < widths[:, None], widths[:, None] - 1 - column, column)
  return jnp.take_along_axis(x, source.reshape(source.shape[:1] + (1, -1) +
                                               (1,) * (x.ndim - 3)), axis=2)


def scale_fraction(scale: float) -> Fraction:
  """`scale` as a fraction, so that scaled sizes are computed in integers: the same
  rounding for a traced size in a batch and for the static canvas that holds it."""
  return Fraction(scale).limit_denominator(1000)


def scaled_sizes(sizes: jax.Array, scale: float) -> jax.Array:
  """floor(size x scale), at least 1: what PyTorch's `F.interpolate(scale_factor=scale)`
  gives, as the authors' inference.py rescales."""
  fraction = scale_fraction(scale)
  return jnp.maximum(sizes * fraction.numerator // fraction.denominator, 1)


def scaled_canvas(canvas: tuple[int, int], scale: float) -> tuple[int, int]:
  """The static canvas that holds every image of `canvas` at `scale`, padded up to a
  multiple of 8 as the image alone would be: e.g. 504 at 0.75 -> 384 (378 rounded up)."""
  fraction = scale_fraction(scale)
  return tuple(max(8, -(-(side * fraction.numerator // fraction.denominator) // 8) * 8)
               for side in canvas)


def multi_scale_logits(logits_fn: LogitsFn, images: jax.Array, sizes: jax.Array,
                       scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5),
                       flip: bool = True, window: int | None = None) -> jax.Array:
  """App. F: logits averaged over rescaled (and mirrored) copies, at the input size.

  As the authors' inference.py: each copy is the image rescaled to floor(size x scale)
  (bilinear, half-pixel centres), predicted, mirrored back, and resized back to the
  image's size with align_corners=True, and the logits (not probabilities) averaged.
  Each image of a padded batch is rescaled on its own region into a static canvas of its
  batch's scaled size (the rest zero, as the image alone padded to a multiple of 8),
  predicted with its scaled size, and its scaled prediction alone resized back: a padded
  batch gives every image what it gets alone, at every scale. Unlike the authors' code,
  the padding is zero (their reflection) and only the image's own region is resized back
  (they stretch the whole output of the padded copy): see README, Evaluation.
  """
  canvas = images.shape[1:3]
  total = 0.0
  count = 0
  for scale in scales:
    scaled = scaled_sizes(sizes, scale)
    x = padding.resize_each(images, sizes, scaled, scaled_canvas(canvas, scale),
                            align_corners=False)
    x = padding.zero_outside(x, scaled)
    copies = jnp.stack([x, flip_inside(x, scaled[:, 1])] if flip else [x])
    # One copy after the other in a loop: one model in the program per scale, not two
    # (a fifth less compile time, measured on CPU), and memory for one copy at a time.
    logits = jax.lax.map(
        lambda copy: (sliding_window_logits(logits_fn, copy, scaled, window) if window
                      else whole_image_logits(logits_fn, copy, scaled)), copies)
    if flip:
      logits = logits.at[1].set(flip_inside(logits[1], scaled[:, 1]))
    for copy in logits:
      total = total + padding.resize_each(copy, scaled, sizes, canvas, align_corners=True)
    count += len(logits)
  return total / count


def multi_scale_probs(logits_fn: LogitsFn, images: jax.Array, sizes: jax.Array,
                      scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5),
                      flip: bool = True, window: int | None = None) -> jax.Array:
  """Softmax of `multi_scale_logits`."""
  return jax.nn.softmax(multi_scale_logits(logits_fn, images, sizes, scales, flip, window),
                        axis=-1)


def predict_logits(logits_fn: LogitsFn, images: jax.Array, eval_cfg,
                   sizes: jax.Array | None = None) -> jax.Array:
  """The logits of the inference configured by `eval_cfg` (scales, flip, window), averaged
  over its windows, scales and flips; `sizes` (B, 2): each image's own size in a padded
  batch (None: the images fill it)."""
  sizes = full_sizes(images) if sizes is None else sizes
  scales = tuple(eval_cfg.scales)
  window = eval_cfg.window or None
  if scales == (1.0,) and not eval_cfg.flip:
    return (sliding_window_logits(logits_fn, images, sizes, window) if window
            else whole_image_logits(logits_fn, images, sizes))
  return multi_scale_logits(logits_fn, images, sizes, scales, eval_cfg.flip, window)


def predict_probs(logits_fn: LogitsFn, images: jax.Array, eval_cfg,
                  sizes: jax.Array | None = None) -> jax.Array:
  """Softmax of `predict_logits`: the class probabilities of the configured inference."""
  return jax.nn.softmax(predict_logits(logits_fn, images, eval_cfg, sizes), axis=-1)


def make_eval_step(predict: Callable, num_classes: int, mesh):
  """jitted (state, confusion, batch) -> (confusion + this batch's, predictions), for
  `predict(state, images, sizes) -> probabilities`: one program per batch shape, so
  one per canvas size of the evaluation batches (data/eval_batches.py)."""
  rep, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)

  def step(state, confusion, batch):
    predictions = jnp.argmax(predict(state, batch['image'], batch['size']), axis=-1)
    return confusion + confusion_matrix(predictions, batch['mask'], num_classes,
                                        valid=batch['valid']), predictions

  return jax.jit(step, out_shardings=(rep, sharded), donate_argnums=1)


def evaluate_split(eval_step, state, dataset, mesh, num_classes: int,
                   class_names: Sequence[str], num_samples: int = 0,
                   reporter: progress.Reporter | None = None) -> tuple[dict, dict]:
  """Scores over one whole split (`eval_step` from `make_eval_step`): a confusion matrix
  summed on the devices over every process's share of the split, divided once. `reporter`
  counts the batches.

  Returns (scores, samples): samples holds lists of the normalised image, mask and
  prediction of this process's first `num_samples` examples, each cropped to its own
  size, for pictures ({} when none are asked for).
  """
  confusion = jax.jit(lambda: jnp.zeros((num_classes, num_classes), jnp.int32),
                      out_shardings=parallel.replicated(mesh))()
  samples = {'image': [], 'mask': [], 'prediction': []}
  for host, waited in progress.timed(dataset):
    batch = parallel.global_batch(mesh, {k: host[k] for k in ('image', 'mask', 'valid',
                                                              'size')})
    confusion, predictions = eval_step(state, confusion, batch)
    if reporter is not None:
      reporter.update(waited_s=waited)
    if len(samples['image']) < num_samples:  # this process's examples
      local = parallel.process_local(predictions)
      for row in np.flatnonzero(host['valid']):
        h, w = host['size'][row]
        samples['image'].append(np.asarray(host['image'][row, :h, :w]))
        samples['mask'].append(np.asarray(host['mask'][row, :h, :w]))
        samples['prediction'].append(np.asarray(local[row, :h, :w]))
  samples = {k: v[:num_samples] for k, v in samples.items()} if num_samples else {}
  confusion = jax.device_get(confusion)
  if reporter is not None:
    reporter.done()
  return scores(confusion, class_names), samples
