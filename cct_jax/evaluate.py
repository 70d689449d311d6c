"""Evaluation (paper sec. 4.1 and App. F): confusion matrix over a whole split, mIoU, per-class
IoU and pixel accuracy; whole-image, sliding-window and multi-scale + flip inference.

The confusion matrix is summed over every pixel of the split before any division (as
scenic's (value, normaliser) metrics), so ignore pixels and padded batches are exact.
"""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cct_jax import parallel, progress
from cct_jax.labels import IGNORE_INDEX

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


def whole_image_probs(logits_fn: LogitsFn, images: jax.Array, sizes: jax.Array) -> jax.Array:
  """Softmax of the whole (padded, then cropped back) image."""
  h, w = images.shape[1:3]
  return jax.nn.softmax(logits_fn(pad_to_multiple(images), sizes)[:, :h, :w], axis=-1)


def sliding_window_probs(logits_fn: LogitsFn, images: jax.Array, sizes: jax.Array, crop: int,
                         overlap: float = 1 / 3) -> jax.Array:
  """Average of the softmax over crop x crop windows with `overlap`, for large images."""
  b, h, w, _ = images.shape
  if h <= crop and w <= crop:
    return whole_image_probs(logits_fn, images, sizes)
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
      probs = whole_image_probs(logits_fn, window, inside)
      pad = ((0, 0), (y, h - y - probs.shape[1]), (x, w - x - probs.shape[2]), (0, 0))
      total = jnp.pad(probs, pad) if total is None else total + jnp.pad(probs, pad)
      counts = counts + jnp.pad(jnp.ones((1,) + probs.shape[1:3] + (1,)), pad)
  return total / counts


def flip_inside(x: jax.Array, widths: jax.Array) -> jax.Array:
  """Each row's first `widths[b]` columns mirrored, the padding after them left in place,
  so a mirrored image stays at the top left of its padded row."""
  column = jnp.arange(x.shape[2])[None, :]
  source = jnp.where(column < widths[:, None], widths[:, None] - 1 - column, column)
  return jnp.take_along_axis(x, source.reshape(source.shape[:1] + (1, -1) +
                                               (1,) * (x.ndim - 3)), axis=2)


def resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear with half-pixel centres and no antialiasing when shrinking, as PyTorch's
  `F.interpolate(mode='bilinear')` that the authors' multi-scale evaluation uses."""
  return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), 'bilinear', antialias=False)


def multi_scale_probs(logits_fn: LogitsFn, images: jax.Array, sizes: jax.Array,
                      scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5),
                      flip: bool = True, window: int | None = None) -> jax.Array:
  """App. F: softmax averaged over rescaled (and mirrored) copies, at the input size.

  A padded batch is rescaled whole, so an image's rescaled copy is its own rescaled to
  within a pixel at its right and bottom edges (the canvas, not the image, is rounded).
  """
  _, h, w, _ = images.shape
  total = 0.0
  count = 0
  for scale in scales:
    canvas = (max(8, round(h * scale)), max(8, round(w * scale)))
    scaled = resize(images, canvas)
    scaled_sizes = jnp.clip(jnp.round(sizes * scale).astype(jnp.int32), 1, jnp.array(canvas))
    for mirrored in ((False, True) if flip else (False,)):
      x = flip_inside(scaled, scaled_sizes[:, 1]) if mirrored else scaled
      probs = (sliding_window_probs(logits_fn, x, scaled_sizes, window) if window
               else whole_image_probs(logits_fn, x, scaled_sizes))
      probs = flip_inside(probs, scaled_sizes[:, 1]) if mirrored else probs
      total = total + resize(probs, (h, w))
      count += 1
  return total / count


def predict_probs(logits_fn: LogitsFn, images: jax.Array, eval_cfg,
                  sizes: jax.Array | None = None) -> jax.Array:
  """The inference configured by `eval_cfg` (scales, flip, window); `sizes` (B, 2): each
  image's own size in a padded batch (None: the images fill it)."""
  sizes = full_sizes(images) if sizes is None else sizes
  scales = tuple(eval_cfg.scales)
  window = eval_cfg.window or None
  if scales == (1.0,) and not eval_cfg.flip:
    return (sliding_window_probs(logits_fn, images, sizes, window) if window
            else whole_image_probs(logits_fn, images, sizes))
  return multi_scale_probs(logits_fn, images, sizes, scales, eval_cfg.flip, window)


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
