"""Losses of CCT (paper sec. 3.2-3.3, App. B).

Inputs are channels-last: logits (B, H, W, C), integer labels (B, H, W) with
`ignore_index` (255) for unlabelled pixels, auxiliary logits stacked as (K, B, H, W, C).
Every mean is a (sum, count) pair divided once, with the count floored at 1, so that an
all-ignored or all-masked batch gives 0 rather than NaN, and its gradient is 0 too.
"""

import jax
import jax.numpy as jnp
import ml_collections

from cct_jax.labels import IGNORE_INDEX

DISTANCES = ('mse', 'kl', 'js')


def default_loss_config() -> ml_collections.ConfigDict:
  """Loss choices and weights (App. J, Table 12)."""
  cfg = ml_collections.ConfigDict()
  cfg.supervised = 'ce'  # 'ce' | 'ab_ce'
  cfg.unsupervised = 'mse'  # 'mse' | 'kl' | 'js'
  cfg.confidence_masking = False
  cfg.confidence_threshold = 0.5
  cfg.pairwise_weight = 0.0
  cfg.pairwise_decoders = 8  # App. B.2: a random 8 of the K auxiliary predictions
  cfg.ramp = 'gaussian'  # see schedules.RAMPS
  cfg.ramp_fraction = 0.1
  cfg.unsup_weight = 30.0
  cfg.weak_weight = 0.4
  cfg.ab_ce = ml_collections.ConfigDict(dict(cap=0.9, ramp_fraction=0.4))
  return cfg


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _log_p_true(logits, labels, ignore_index):
  """Log-probability of the true class per pixel (0 where ignored), and the valid mask."""
  valid = labels != ignore_index
  safe_labels = jnp.where(valid, labels, 0)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  log_p_true = jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
  return jnp.where(valid, log_p_true, 0.0), valid


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """Eq. (1), supervised loss L_s: pixel CE, mean over the non-ignored pixels."""
  log_p_true, valid = _log_p_true(logits, labels, ignore_index)
  return _masked_mean(-log_p_true, valid)


def ab_cross_entropy(logits: jax.Array, labels: jax.Array, threshold: jax.Array,
                     ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """Eq. (4), annealed bootstrapped CE (ab-CE).

  Only pixels whose probability of the true class is below `threshold` (eta(t), see
  `schedules.ab_ce_threshold`) count; the hardest valid pixel of every image is always
  kept, so the loss never runs dry. The selection carries no gradient.
  """
  log_p_true, valid = _log_p_true(logits, labels, ignore_index)
  p_true = jax.lax.stop_gradient(jnp.exp(log_p_true))
  batch = labels.shape[0]
  flat_p = jnp.where(valid, p_true, jnp.inf).reshape(batch, -1)
  hardest = jnp.arange(flat_p.shape[1]) == jnp.argmin(flat_p, axis=1)[:, None]
  keep = valid & ((p_true < threshold) | hardest.reshape(labels.shape))
  return _masked_mean(-log_p_true, keep)


def sub_pixel_order(x: jax.Array, levels: int) -> jax.Array:
  """(B, 2^n h, 2^n w, ...) -> (B, h w, 4^n, ...), n = `levels`: for each of the h x w
  positions (flattened), its 2^n x 2^n pixels in the order n pixel shuffles place them
  (pixel (i, j) of shuffle k is digit 2i + j of the sub-pixel index, the first shuffle's
  the most significant): the order `models.decoders.sub_pixel_logits` computes a
  decoder's logits in. A mean over pixels is the same in any order."""
  b, height, width = x.shape[:3]
  side = 2**levels
  rest = x.shape[3:]
  x = x.reshape(b, height // side, *(2,) * levels, width // side, *(2,) * levels, *rest)
  rows, cols = range(2, 2 + levels), range(3 + levels, 3 + 2 * levels)
  digits = [axis for pair in zip(rows, cols) for axis in pair]
  x = x.transpose(0, 1, 2 + levels, *digits, *range(3 + 2 * levels, x.ndim))
  return x.reshape(b, (height // side) * (width // side), side * side, *rest)


def pixel_order(x: jax.Array, levels: int, height: int) -> jax.Array:
  """The inverse of `sub_pixel_order`: (B, h w, 4^n, ...) with h = `height` ->
  (B, 2^n h, 2^n w, ...)."""
  b, positions = x.shape[:2]
  rest = x.shape[3:]
  x = x.reshape(b, height, positions // height, *(2,) * (2 * levels), *rest)
  rows, cols = range(3, 3 + 2 * levels, 2), range(4, 4 + 2 * levels, 2)
  x = x.transpose(0, 1, *rows, 2, *cols, *range(3 + 2 * levels, x.ndim))
  side = 2**levels
  return x.reshape(b, height * side, positions // height * side, *rest)


def confidence_mask(main_logits: jax.Array, threshold: float) -> jax.Array:
  """App. B.2 Conf-Mask: pixels whose main max-probability exceeds the threshold."""
  return jnp.max(jax.nn.softmax(main_logits, axis=-1), axis=-1) > threshold


def _distance(aux_logits, target_log_probs, distance):
  """Per-pixel d(main, aux), shape (K, B, H, W): App. B.1, Eqs. (7)-(9).

  MSE is averaged over classes (the authors' code: mean over B*H*W*C); KL and JS are summed
  over classes as in Eqs. (8)-(9), the divergence of one pixel's distributions.
  """
  log_p = target_log_probs
  p = jnp.exp(log_p)
  if distance == 'mse':  # softmax itself: one exp a logit where exp(log_softmax) takes two
    return jnp.mean(jnp.square(jax.nn.softmax(aux_logits, axis=-1) - p), axis=-1)
  log_q = jax.nn.log_softmax(aux_logits, axis=-1)
  if distance == 'kl':  # KL(main || aux)
    return jnp.sum(p * (log_p - log_q), axis=-1)
  if distance == 'js':
    log_m = jnp.logaddexp(log_p, log_q) - jnp.log(2.0)
    kl_pm = jnp.sum(p * (log_p - log_m), axis=-1)
    kl_qm = jnp.sum(jnp.exp(log_q) * (log_q - log_m), axis=-1)
    return 0.5 * (kl_pm + kl_qm)
  raise ValueError(f'distance {distance!r} not in {DISTANCES}')


def consistency_target(main_logits: jax.Array, confidence_threshold: float | None = None):
  """What the consistency loss compares the auxiliary decoders with: the main prediction's
  log-probabilities, a target only (stop-gradient: the main decoder is trained by labelled
  data alone, sec. 3.2.2), and with `confidence_threshold` the pixels that count (App. B.2),
  else None. Computed once for any number of decoders."""
  target = jax.lax.stop_gradient(jax.nn.log_softmax(main_logits, axis=-1))
  mask = (None if confidence_threshold is None
          else confidence_mask(main_logits, confidence_threshold))
  return target, mask


def consistency_to_target(aux_logits: jax.Array, target, distance: str = 'mse') -> jax.Array:
  """L_u of aux_logits (K, B, ..., C) against `consistency_target` of (B, ..., C) main
  logits; with a mask that no pixel passes, 0."""
  log_probs, mask = target
  per_pixel = _distance(aux_logits, log_probs[None], distance)
  if mask is None:
    return jnp.mean(per_pixel)
  return _masked_mean(per_pixel, jnp.broadcast_to(mask, per_pixel.shape))


def consistency_loss(aux_logits: jax.Array, main_logits: jax.Array, distance: str = 'mse',
                     confidence_threshold: float | None = None) -> jax.Array:
  """Eq. (2), unsupervised loss L_u = mean_k d(softmax(aux_k), softmax(main)).

  aux_logits (K, B, H, W, C); main_logits (B, H, W, C), a target only. With
  `confidence_threshold` set, only pixels whose main max-probability exceeds it count
  (App. B.2); with none of them, the loss is 0.
  """
  return consistency_to_target(aux_logits,
                               consistency_target(main_logits, confidence_threshold), distance)


def pairwise_loss(aux_logits: jax.Array, key: jax.Array | None = None,
                  num_decoders: int = 8) -> jax.Array:
  """Eq. (10), App. B.2 P-Wise: variance of the auxiliary predictions around their mean.

  Summed over classes, averaged over the chosen decoders and all pixels (as the authors'
  code, github.com/yassouali/CCT). With a key, a random `num_decoders` of the K
  predictions are used (the paper's 8 of 30); without one, all K. It is an ordinary
  differentiable term of the total loss, so unlike the authors' code (which adds it after
  the backward pass) it trains the auxiliary decoders.
  """
  num_aux = aux_logits.shape[0]
  if key is not None and num_decoders < num_aux:
    chosen = jax.random.permutation(key, num_aux)[:num_decoders]
    aux_logits = aux_logits[chosen]
  probs = jax.nn.softmax(aux_logits, axis=-1)
  variance = jnp.mean(jnp.square(probs - jnp.mean(probs, axis=0)), axis=0)
  return jnp.mean(jnp.sum(variance, axis=-1))


def weak_loss(aux_logits: jax.Array, pseudo_labels: jax.Array,
              ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """Eq. (6), weakly supervised loss L_w = mean_k CE(aux_k, pseudo-label)."""
  per_decoder = jax.vmap(cross_entropy, in_axes=(0, None, None))(
      aux_logits, pseudo_labels, ignore_index)
  return jnp.mean(per_decoder)
