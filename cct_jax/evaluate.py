"""Evaluation (SPEC 4; paper App. F): confusion matrix over a whole split, mIoU, per-class
IoU and pixel accuracy; whole-image, sliding-window and multi-scale + flip inference.

The confusion matrix is summed over every pixel of the split before any division (as
scenic's (value, normaliser) metrics), so ignore pixels and padded batches are exact.
"""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = 255
# logits_fn(images (B, H, W, 3) with H, W multiples of 8) -> logits (B, H, W, C)
LogitsFn = Callable[[jax.Array], jax.Array]


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
  """mIoU over the classes that occur (in labels or predictions), per-class IoU, accuracy."""
  confusion = np.asarray(confusion, np.float64)
  true_positive = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - true_positive
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = np.where(union > 0, true_positive / union, np.nan)
  names = list(class_names) if class_names else [str(i) for i in range(len(iou))]
  return dict(
      miou=float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
      pixel_accuracy=float(true_positive.sum() / max(confusion.sum(), 1.0)),
      per_class_iou={name: (None if np.isnan(v) else float(v)) for name, v in zip(names, iou)},
  )


def format_table(results: dict) -> str:
  lines = ['| class | IoU |', '|---|---|']
  for name, value in results['per_class_iou'].items():
    lines.append(f"| {name} | {'n/a' if value is None else f'{100 * value:.1f}'} |")
  lines.append(f"| **mIoU** | **{100 * results['miou']:.1f}** |")
  lines.append(f"| pixel accuracy | {100 * results['pixel_accuracy']:.1f} |")
  return '\n'.join(lines)


def pad_to_multiple(images: jax.Array, multiple: int = 8) -> jax.Array:
  """Zero padding at the bottom and right: zero is the mean colour after normalisation."""
  _, h, w, _ = images.shape
  pad_h, pad_w = -h % multiple, -w % multiple
  return jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


def whole_image_probs(logits_fn: LogitsFn, images: jax.Array) -> jax.Array:
  """Softmax of the whole (padded, then cropped back) image."""
  h, w = images.shape[1:3]
  return jax.nn.softmax(logits_fn(pad_to_multiple(images))[:, :h, :w], axis=-1)


def sliding_window_probs(logits_fn: LogitsFn, images: jax.Array, crop: int,
                         overlap: float = 1 / 3) -> jax.Array:
  """Average of the softmax over crop x crop windows with `overlap`, for large images."""
  b, h, w, _ = images.shape
  if h <= crop and w <= crop:
    return whole_image_probs(logits_fn, images)
  stride = max(1, int(crop * (1 - overlap)))
  starts = lambda size: sorted({min(i * stride, max(size - crop, 0))
                                for i in range(math.ceil(max(size - crop, 0) / stride) + 1)})
  total, counts = None, jnp.zeros((1, h, w, 1))
  for y in starts(h):
    for x in starts(w):
      window = images[:, y:y + crop, x:x + crop]
      probs = whole_image_probs(logits_fn, window)
      pad = ((0, 0), (y, h - y - probs.shape[1]), (x, w - x - probs.shape[2]), (0, 0))
      total = jnp.pad(probs, pad) if total is None else total + jnp.pad(probs, pad)
      counts = counts + jnp.pad(jnp.ones((1,) + probs.shape[1:3] + (1,)), pad)
  return total / counts


def multi_scale_probs(logits_fn: LogitsFn, images: jax.Array,
                      scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5),
                      flip: bool = True, window: int | None = None) -> jax.Array:
  """App. F: softmax averaged over rescaled (and mirrored) copies, at the input size."""
  b, h, w, c = images.shape
  total = 0.0
  count = 0
  for scale in scales:
    size = (max(8, round(h * scale)), max(8, round(w * scale)))
    scaled = jax.image.resize(images, (b,) + size + (c,), 'bilinear')
    for mirrored in ((False, True) if flip else (False,)):
      x = scaled[:, :, ::-1] if mirrored else scaled
      probs = (sliding_window_probs(logits_fn, x, window) if window
               else whole_image_probs(logits_fn, x))
      probs = probs[:, :, ::-1] if mirrored else probs
      total = total + jax.image.resize(probs, (b, h, w, probs.shape[-1]), 'bilinear')
      count += 1
  return total / count


def predict_probs(logits_fn: LogitsFn, images: jax.Array, eval_cfg) -> jax.Array:
  """The inference configured by `eval_cfg` (scales, flip, window)."""
  scales = tuple(eval_cfg.scales)
  window = eval_cfg.window or None
  if scales == (1.0,) and not eval_cfg.flip:
    return (sliding_window_probs(logits_fn, images, window) if window
            else whole_image_probs(logits_fn, images))
  return multi_scale_probs(logits_fn, images, scales, eval_cfg.flip, window)
