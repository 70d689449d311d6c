"""Class activation maps and the pseudo-labels made from them (sec. 3.3).

Pure functions of arrays, jittable: CAMs are averaged over rescaled (and mirrored) copies
of the image (App. F's augmentation, optional), normalised per present class by their
maximum, and thresholded: max < theta_bg -> background, > theta_fg -> the argmax class,
otherwise IGNORE_INDEX (`pseudo_labels`); or at one threshold, background below it
(`confident_labels`, what the authors' pipeline gives each of its two CRFs).
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cct_jax.labels import IGNORE_INDEX

# cam_fn(images (B, H, W, 3)) -> raw CAMs (B, h, w, F) at the encoder's resolution.
CamFn = Callable[[jax.Array], jax.Array]


def foreground_classes(num_classes: int, background_class: int) -> np.ndarray:
  """The class ids g_c predicts, in the order of its outputs: all but the background."""
  return np.array([c for c in range(num_classes) if c != background_class], np.int32)


def multi_scale_cams(cam_fn: CamFn, images: jax.Array, scales: Sequence[float] = (1.0,),
                     flip: bool = False) -> jax.Array:
  """Raw CAMs (B, H, W, F) at the input size: the mean over each rescaled (and mirrored)
  copy's CAMs, resized back bilinearly."""
  b, h, w, c = images.shape
  total, count = 0.0, 0
  for scale in scales:
    size = (max(8, round(h * scale)), max(8, round(w * scale)))
    scaled = jax.image.resize(images, (b, *size, c), 'bilinear')
    for mirrored in ((False, True) if flip else (False,)):
      cams = cam_fn(scaled[:, :, ::-1] if mirrored else scaled)
      cams = cams[:, :, ::-1] if mirrored else cams
      total = total + jax.image.resize(cams, (b, h, w, cams.shape[-1]), 'bilinear')
      count += 1
  return total / count


def normalise_cams(cams: jax.Array, present: jax.Array,
                   valid: jax.Array | None = None) -> jax.Array:
  """Each present class's CAM divided by its maximum over the valid pixels, in [0, 1];
  absent classes are 0. cams (B, H, W, F), present bool (B, F), valid bool (B, H, W)."""
  if valid is not None:
    cams = cams * valid[..., None]
  peak = jnp.max(cams, axis=(1, 2), keepdims=True)
  return cams / jnp.maximum(peak, 1e-5) * present[:, None, None, :]


def pseudo_labels(cams: jax.Array, foreground: np.ndarray, *, theta_bg: float,
                  theta_fg: float, background_class: int) -> jax.Array:
  """(B, H, W) int32 labels from normalised CAMs (B, H, W, F) of the classes `foreground`
  (class id of each CAM channel)."""
  score = jnp.max(cams, axis=-1)
  best = jnp.asarray(foreground, jnp.int32)[jnp.argmax(cams, axis=-1)]
  unsure = jnp.where(score > theta_fg, best, IGNORE_INDEX)
  return jnp.where(score < theta_bg, background_class, unsure).astype(jnp.int32)


def confident_labels(cams: jax.Array, foreground: np.ndarray, *, theta: float,
                     background_class: int) -> jax.Array:
  """(B, H, W) int32 labels at one threshold: the argmax class where the max CAM is above
  `theta`, background elsewhere. IRN's argmax over the CAMs with a constant `theta`
  background channel in front (github.com/jiwoon-ahn/irn, step/cam_to_ir_label.py), the
  unary of each of the authors' two CRFs."""
  best = jnp.asarray(foreground, jnp.int32)[jnp.argmax(cams, axis=-1)]
  return jnp.where(jnp.max(cams, axis=-1) > theta, best, background_class).astype(jnp.int32)
