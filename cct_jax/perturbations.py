"""The seven perturbations of z (paper sec. 3.2.3, App. G; SPEC 2).

Each auxiliary decoder owns one perturbation. Every perturbation is a pure function with
the same signature,

    perturb(z, key, main_logits, decode) -> z_tilde

  z            (B, h, w, C) encoder output, channels last.
  key          a `jax.random` key; the only source of randomness.
  main_logits  (B, s*h, s*w, K) the main decoder's prediction for the same images. The
               caller stops its gradient; the guided masks use it, the others ignore it.
  decode       z -> logits of the auxiliary decoder that owns this perturbation. Only
               I-VAT calls it; the others ignore it.

so that the model can `jax.vmap` one function over a stack of decoders of one type (the
keys and decoder parameters carry the stacked axis). Hyper-parameters are keyword-only
and bound by `build_perturbations` with `functools.partial`.

Masks are applied by multiplication, so z keeps its gradient path to the encoder at
every position that survives.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

Perturbation = Callable[..., jax.Array]

# The roster order: decoders of a model are grouped by type in this order.
ROSTER_ORDER = ('vat', 'dropout', 'cutout', 'context_mask', 'object_mask',
                'feature_drop', 'feature_noise')

VAT_METHODS = ('finite_difference', 'hvp')


def default_perturbation_config() -> ml_collections.ConfigDict:
  """The paper's roster (K = 30) and hyper-parameters (App. J, Table 12; SPEC 2)."""
  cfg = ml_collections.ConfigDict()
  cfg.counts = ml_collections.ConfigDict(dict(
      vat=2, dropout=6, cutout=6, context_mask=2, object_mask=2, feature_drop=6,
      feature_noise=6))
  cfg.background_class = 0
  cfg.feature_noise = ml_collections.ConfigDict(dict(uniform_range=0.3))
  cfg.feature_drop = ml_collections.ConfigDict(dict(gamma_range=(0.6, 0.9)))
  cfg.dropout = ml_collections.ConfigDict(dict(rate=0.5))
  cfg.cutout = ml_collections.ConfigDict(dict(erase=0.4))
  cfg.vat = ml_collections.ConfigDict(dict(
      method='finite_difference', xi=1e-6, eps=2.0, iterations=1))
  return cfg


# --------------------------------------------------------------------------------------
# Feature-based perturbations.


def feature_noise(z, key, main_logits, decode, *, uniform_range: float):
  """F-Noise: z~ = z + z * N, N ~ U(-r, r).

  One noise tensor of shape (1, h, w, C) is shared by the whole batch, as in App. L and
  Ref: the paper reports the same accuracy at a fraction of the sampling cost.
  """
  del main_logits, decode
  noise = jax.random.uniform(key, (1,) + z.shape[1:], z.dtype, -uniform_range,
                             uniform_range)
  return z + z * noise


def feature_drop(z, key, main_logits, decode, *, gamma_range: tuple[float, float]):
  """F-Drop: drop the positions whose channel mean, over its per-sample max, is >= gamma.

  gamma ~ U(gamma_range) is drawn once per sample. The comparison is written as
  `a < gamma * max(a)` (Ref) so an all-zero sample needs no division.
  """
  del main_logits, decode
  low, high = gamma_range
  attention = jnp.mean(z, axis=-1, keepdims=True)  # (B, h, w, 1)
  gamma = jax.random.uniform(key, (z.shape[0], 1, 1, 1), z.dtype, low, high)
  peak = jnp.max(attention, axis=(1, 2), keepdims=True)
  return z * (attention < gamma * peak).astype(z.dtype)


def dropout(z, key, main_logits, decode, *, rate: float):
  """DropOut: spatial (channel-wise) dropout; each sample drops whole channels.

  Survivors are scaled by 1 / (1 - rate) (x2 at the default 0.5), as torch's Dropout2d.
  """
  del main_logits, decode
  keep = jax.random.bernoulli(key, 1.0 - rate, (z.shape[0], 1, 1, z.shape[-1]))
  return jnp.where(keep, z / (1.0 - rate), jnp.zeros_like(z))


# --------------------------------------------------------------------------------------
# Prediction-based perturbations: guided masks.


def _strides(main_logits: jax.Array, z: jax.Array) -> tuple[int, int]:
  """The ratio between the prediction's and the features' resolution (8 for CCT)."""
  (height, width), (h, w) = main_logits.shape[1:3], z.shape[1:3]
  if height % h or width % w:
    raise ValueError(f'prediction {height}x{width} is not a multiple of z {h}x{w}')
  return height // h, width // w


def foreground_mask(main_logits: jax.Array, z: jax.Array,
                    background_class: int) -> jax.Array:
  """M = [argmax(main prediction) != background] at z's resolution, shape (B, h, w, 1).

  Brought down by taking every s-th pixel (`M[::s, ::s]`), which is what Ref's nearest
  resize does; taking the argmax only there gives the same M for 1/s^2 of the work.
  """
  sh, sw = _strides(main_logits, z)
  prediction = jnp.argmax(main_logits[:, ::sh, ::sw], axis=-1)
  return (prediction != background_class)[..., None].astype(z.dtype)


def context_mask(z, key, main_logits, decode, *, background_class: int):
  """Con-Msk: z~ = z * M, the context (background) is removed."""
  del key, decode
  return z * foreground_mask(main_logits, z, background_class)


def object_mask(z, key, main_logits, decode, *, background_class: int):
  """Obj-Msk: z~ = z * (1 - M), the detected objects are removed."""
  del key, decode
  return z * (1 - foreground_mask(main_logits, z, background_class))


def cutout_keep_mask(main_logits: jax.Array, key: jax.Array, *, erase: float,
                     background_class: int, strides: tuple[int, int] = (1, 1)) -> jax.Array:
  """G-Cutout's keep mask (B, H/sh, W/sw): 0 inside the cut boxes, 1 elsewhere.

  Objects are approximated per predicted class: the bounding box of every non-background
  class present in a sample's full-resolution argmax. (Ref takes the connected regions of
  the foreground from OpenCV contours on the host; two separate objects of one class here
  share one box.) In each box of height bh and width bw a box of floor(erase * bh) x
  floor(erase * bw) is cut at a uniformly random integer offset that keeps it inside
  (Ref: 0.4 of each side, not of the area).

  The mask is evaluated only at the pixels (sh*y, sw*x), which equals computing it at full
  resolution and taking `[::sh, ::sw]`; `strides=(1, 1)` gives the full-resolution mask.
  """
  batch, height, width, num_classes = main_logits.shape
  prediction = jnp.argmax(main_logits, axis=-1)
  classes = jnp.arange(num_classes)
  present = prediction[..., None] == classes  # (B, H, W, classes)
  rows = jnp.any(present, axis=2)  # (B, H, classes): class c occurs in row y
  cols = jnp.any(present, axis=1)  # (B, W, classes)
  is_object = jnp.any(rows, axis=1) & (classes != background_class)  # (B, classes)

  def cut_interval(occupied, key):
    """Start and length of the cut along one axis, per (sample, class)."""
    size = occupied.shape[1]
    low = jnp.argmax(occupied, axis=1)  # first occupied index
    high = size - 1 - jnp.argmax(jnp.flip(occupied, axis=1), axis=1)  # last one
    extent = high - low + 1
    length = jnp.floor(erase * extent).astype(jnp.int32)
    num_offsets = extent - length + 1  # the cut stays inside the box
    offset = jnp.floor(jax.random.uniform(key, (batch, num_classes)) * num_offsets)
    offset = jnp.minimum(offset.astype(jnp.int32), num_offsets - 1)
    return low + offset, length

  row_key, col_key = jax.random.split(key)
  row_start, row_length = cut_interval(rows, row_key)
  col_start, col_length = cut_interval(cols, col_key)

  def inside(start, length, size, stride):
    positions = jnp.arange(0, size, stride)[None, :, None]
    return (positions >= start[:, None, :]) & (positions < (start + length)[:, None, :])

  in_rows = inside(row_start, row_length, height, strides[0])  # (B, h, classes)
  in_cols = inside(col_start, col_length, width, strides[1])  # (B, w, classes)
  cut = jnp.any(in_rows[:, :, None, :] & in_cols[:, None, :, :]
                & is_object[:, None, None, :], axis=-1)
  return ~cut


def guided_cutout(z, key, main_logits, decode, *, erase: float, background_class: int):
  """G-Cutout: zero a random 0.4 x 0.4 (of each side) box inside each object's box."""
  del decode
  keep = cutout_keep_mask(main_logits, key, erase=erase, background_class=background_class,
                          strides=_strides(main_logits, z))
  return z * keep[..., None].astype(z.dtype)


# --------------------------------------------------------------------------------------
# Prediction-based perturbations: I-VAT.


def _unit(x: jax.Array) -> jax.Array:
  """x / ||x|| per sample (over every axis but the first); a zero sample stays zero."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)), keepdims=True))
  return x / jnp.maximum(norm, jnp.finfo(x.dtype).tiny)


def adversarial_direction(logits_fn, x, key, *, method: str, xi: float,
                          iterations: int) -> jax.Array:
  """The unit direction (per sample, over all but the batch axis) in which a small change
  of `x` changes the prediction most: VAT's power iteration (Miyato et al.; paper App. G,
  Eqs. 13-15), on the encoder output z (I-VAT) or on the input image (input VAT).

  It iterates on the Hessian of D(r) = KL(p || q(x + r)) at r = 0, with
  p = stop_gradient(softmax(logits_fn(x))) and q = softmax(logits_fn(.)):
    'finite_difference' (paper, Ref): d <- grad_d D(xi * d), normalised.
    'hvp': d <- H d exactly, as `jax.jvp` of `jax.grad` (no xi). At xi = 1e-6 in float32
      the finite difference is close to rounding noise; the HVP is not.
  D sums over the batch; with a per-sample `logits_fn` each sample's gradient depends on
  that sample only, so the per-sample normalisation gives each sample its own direction.
  The direction is a constant to any outer gradient (as Ref's `d.grad`).
  """
  x_fixed = jax.lax.stop_gradient(x)
  log_p = jax.lax.stop_gradient(jax.nn.log_softmax(logits_fn(x_fixed)))

  def divergence(r):
    log_q = jax.nn.log_softmax(logits_fn(x_fixed + r))
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q))

  if method == 'finite_difference':
    power_step = lambda d: jax.grad(lambda d: divergence(xi * d))(d)
  elif method == 'hvp':
    origin = jnp.zeros_like(x_fixed)
    power_step = lambda d: jax.jvp(jax.grad(divergence), (origin,), (d,))[1]
  else:
    raise ValueError(f'vat method {method!r} not in {VAT_METHODS}')

  d = _unit(jax.random.normal(key, x.shape, x.dtype))
  for _ in range(iterations):
    d = _unit(power_step(d))
  return jax.lax.stop_gradient(d)


def vat(z, key, main_logits, decode, *, method: str, xi: float, eps: float,
        iterations: int):
  """I-VAT (paper App. G): z~ = z + r_adv, r_adv = eps * `adversarial_direction` of the
  auxiliary decoder that owns it, so ||r_adv|| = eps per sample.

  Neither the encoder nor the decoder gets a gradient through r_adv: the encoder is
  trained through z only.
  """
  del main_logits
  return z + eps * adversarial_direction(decode, z, key, method=method, xi=xi,
                                         iterations=iterations)


# --------------------------------------------------------------------------------------

PERTURBATIONS: dict[str, Perturbation] = {
    'vat': vat,
    'dropout': dropout,
    'cutout': guided_cutout,
    'context_mask': context_mask,
    'object_mask': object_mask,
    'feature_drop': feature_drop,
    'feature_noise': feature_noise,
}


def build_perturbations(cfg: ml_collections.ConfigDict) -> dict[str, Perturbation]:
  """Name -> perturb(z, key, main_logits, decode), in ROSTER_ORDER, count-0 types left out.

  `cfg` is shaped like `default_perturbation_config()`.
  """
  if cfg.vat.method not in VAT_METHODS:
    raise ValueError(f'vat.method {cfg.vat.method!r} not in {VAT_METHODS}')
  hyper_parameters = {
      'vat': dict(method=cfg.vat.method, xi=cfg.vat.xi, eps=cfg.vat.eps,
                  iterations=cfg.vat.iterations),
      'dropout': dict(rate=cfg.dropout.rate),
      'cutout': dict(erase=cfg.cutout.erase, background_class=cfg.background_class),
      'context_mask': dict(background_class=cfg.background_class),
      'object_mask': dict(background_class=cfg.background_class),
      'feature_drop': dict(gamma_range=tuple(cfg.feature_drop.gamma_range)),
      'feature_noise': dict(uniform_range=cfg.feature_noise.uniform_range),
  }
  unknown = set(cfg.counts.keys()) - set(ROSTER_ORDER)
  if unknown:
    raise ValueError(f'unknown perturbation types {sorted(unknown)}')
  return {name: functools.partial(PERTURBATIONS[name], **hyper_parameters[name])
          for name in ROSTER_ORDER if cfg.counts.get(name, 0) > 0}
