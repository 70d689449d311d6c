"""The seven perturbations of z (paper sec. 3.2.3, App. G).

Each auxiliary decoder owns one perturbation. Every perturbation is a pure function with
the same signature,

    perturb(z, key, main_prediction, decode) -> z_tilde

  z                (B, h, w, C) encoder output, channels last.
  key              a `jax.random` key; the only source of randomness.
  main_prediction  (B, s*h, s*w) the main decoder's argmax for the same images, an integer
                   map (no gradient); the guided masks use it, the others ignore it.
  decode           z -> logits of the auxiliary decoder that owns this perturbation, in
                   sub-pixel order (models/decoders.py `sub_pixel_logits`: I-VAT's
                   divergence, a sum over pixels, is the same in any order). Only I-VAT
                   calls it (G-Cutout reads its class count); the others ignore it.

so that the model can `jax.vmap` one function over a stack of decoders of one type (the
keys and decoder parameters carry the stacked axis).

A perturbation is a function plus its config block: `@register(name, block)` files it
under `name`, and `block` (its number of auxiliary decoders, `count`, and the values of its
keyword-only hyper-parameters) becomes `config.perturbations.<name>`. A hyper-parameter
that its block lacks comes from the section's shared fields (`background_class`, which the
weak labels of sec. 3.3 read too). `build_perturbations` binds them with
`functools.partial`. The defaults are the paper's roster (K = 30, sec. 4.4.1) and
hyper-parameters (App. J, Table 12), but where the authors' code, which produced the
paper's tables, does otherwise (F-Drop's threshold, I-VAT's normalisation: README "Where
the paper and the authors' code differ").

Masks are applied by multiplication, so z keeps its gradient path to the encoder at
every position that survives.
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from cct_jax import errors

Perturbation = Callable[..., jax.Array]

# F-Drop: the images that share one threshold gamma.
GAMMA_PER = ('batch', 'sample')
VAT_METHODS = ('auto', 'finite_difference', 'hvp')
# How I-VAT's power step is made a direction: `adversarial_direction`.
VAT_NORMALISATIONS = ('exact', 'authors')


@dataclasses.dataclass(frozen=True)
class Registered:
  perturb: Perturbation
  block: Mapping  # the default config block: `count` and the hyper-parameters
  check: Callable[[dict], None] | None = None  # raises on hyper-parameters it cannot run


PERTURBATIONS: dict[str, Registered] = {}


def register(name: str, block: Mapping, check: Callable[[dict], None] | None = None):
  """Files the decorated perturbation under `name`, with its default config block."""

  def add(perturb: Perturbation) -> Perturbation:
    PERTURBATIONS[name] = Registered(perturb, dict(block), check)
    return perturb

  return add


# --------------------------------------------------------------------------------------
# Feature-based perturbations.


@register('feature_noise', dict(count=6, uniform_range=0.3))
def feature_noise(z, key, main_prediction, decode, *, uniform_range: float):
  """F-Noise: z~ = z + z * N, N ~ U(-r, r).

  One noise tensor of shape (1, h, w, C) is shared by the whole batch, as in App. L and
  the authors' code: the paper reports the same accuracy at a fraction of the sampling
  cost.
  """
  del main_prediction, decode
  noise = jax.random.uniform(key, (1,) + z.shape[1:], z.dtype, -uniform_range,
                             uniform_range)
  return z + z * noise


def _check_feature_drop(hyper_parameters: dict) -> None:
  low, high = hyper_parameters['gamma_range']
  if not 0 <= low <= high <= 1:
    raise errors.UserError(f'perturbations.feature_drop.gamma_range ({low}, {high}) is not '
                           'a range within [0, 1]')
  if hyper_parameters['gamma_per'] not in GAMMA_PER:
    raise errors.UserError(f"perturbations.feature_drop.gamma_per "
                           f"{hyper_parameters['gamma_per']!r} not in {GAMMA_PER}")


@register('feature_drop', dict(count=6, gamma_range=(0.7, 0.9), gamma_per='batch'),
          check=_check_feature_drop)
def feature_drop(z, key, main_prediction, decode, *, gamma_range: tuple[float, float],
                 gamma_per: str):
  """F-Drop: drop the positions whose channel mean, over its per-sample max, is >= gamma.

  gamma ~ U(gamma_range), drawn once per call for the whole batch (`gamma_per='batch'`)
  or once per sample ('sample'). The defaults are the authors' code, one gamma per batch
  from U(0.7, 0.9); the paper says U(0.6, 0.9), "10% to 40%" of the most active regions,
  and does not say per what. The comparison is written as `a < gamma * max(a)`, as
  theirs, so an all-zero sample needs no division.
  """
  del main_prediction, decode
  low, high = gamma_range
  attention = jnp.mean(z, axis=-1, keepdims=True)  # (B, h, w, 1)
  draws = 1 if gamma_per == 'batch' else z.shape[0]
  gamma = jax.random.uniform(key, (draws, 1, 1, 1), z.dtype, low, high)
  peak = jnp.max(attention, axis=(1, 2), keepdims=True)
  return z * (attention < gamma * peak).astype(z.dtype)


@register('dropout', dict(count=6, rate=0.5))
def dropout(z, key, main_prediction, decode, *, rate: float):
  """DropOut: spatial (channel-wise) dropout; each sample drops whole channels.

  Survivors are scaled by 1 / (1 - rate) (x2 at the default 0.5), as torch's Dropout2d.
  """
  del main_prediction, decode
  keep = jax.random.bernoulli(key, 1.0 - rate, (z.shape[0], 1, 1, z.shape[-1]))
  return jnp.where(keep, z / (1.0 - rate), jnp.zeros_like(z))


# --------------------------------------------------------------------------------------
# Prediction-based perturbations: guided masks.


def _strides(main_prediction: jax.Array, z: jax.Array) -> tuple[int, int]:
  """The ratio between the prediction's and the features' resolution (8 for CCT)."""
  (height, width), (h, w) = main_prediction.shape[1:3], z.shape[1:3]
  if height % h or width % w:
    raise ValueError(f'prediction {height}x{width} is not a multiple of z {h}x{w}')
  return height // h, width // w


def foreground_mask(main_prediction: jax.Array, z: jax.Array,
                    background_class: int) -> jax.Array:
  """M = [main prediction != background] at z's resolution, shape (B, h, w, 1).

  Brought down by taking every s-th pixel (`M[::s, ::s]`), which is what the authors'
  nearest resize does.
  """
  sh, sw = _strides(main_prediction, z)
  return (main_prediction[:, ::sh, ::sw] != background_class)[..., None].astype(z.dtype)


@register('context_mask', dict(count=2))
def context_mask(z, key, main_prediction, decode, *, background_class: int):
  """Con-Msk: z~ = z * M, the context (background) is removed."""
  del key, decode
  return z * foreground_mask(main_prediction, z, background_class)


@register('object_mask', dict(count=2))
def object_mask(z, key, main_prediction, decode, *, background_class: int):
  """Obj-Msk: z~ = z * (1 - M), the detected objects are removed."""
  del key, decode
  return z * (1 - foreground_mask(main_prediction, z, background_class))


def cutout_keep_mask(main_prediction: jax.Array, key: jax.Array, *, num_classes: int,
                     erase: float, background_class: int,
                     strides: tuple[int, int] = (1, 1)) -> jax.Array:
  """G-Cutout's keep mask (B, H/sh, W/sw): 0 inside the cut boxes, 1 elsewhere.

  Objects are approximated per predicted class: the bounding box of every non-background
  class present in a sample's full-resolution argmax. (The authors' code takes the
  connected regions of the foreground from OpenCV contours on the host; two separate
  objects of one class here share one box.) In each box of height bh and width bw a box of
  floor(erase * bh) x floor(erase * bw) is cut at a uniformly random integer offset that
  keeps it inside (as theirs: 0.4 of each side, not of the area).

  The mask is evaluated only at the pixels (sh*y, sw*x), which equals computing it at full
  resolution and taking `[::sh, ::sw]`; `strides=(1, 1)` gives the full-resolution mask.
  """
  batch, height, width = main_prediction.shape
  classes = jnp.arange(num_classes)
  present = main_prediction[..., None] == classes  # (B, H, W, classes)
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


@register('cutout', dict(count=6, erase=0.4))
def guided_cutout(z, key, main_prediction, decode, *, erase: float, background_class: int):
  """G-Cutout: zero a random 0.4 x 0.4 (of each side) box inside each object's box."""
  num_classes = jax.eval_shape(decode, z).shape[-1]  # the shape alone: nothing is decoded
  keep = cutout_keep_mask(main_prediction, key, num_classes=num_classes, erase=erase,
                          background_class=background_class,
                          strides=_strides(main_prediction, z))
  return z * keep[..., None].astype(z.dtype)


# --------------------------------------------------------------------------------------
# Prediction-based perturbations: I-VAT.


def _norm(x: jax.Array) -> jax.Array:
  """||x|| per sample (over every axis but the first), broadcastable against x."""
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)), keepdims=True))


def _unit(x: jax.Array) -> jax.Array:
  """x / ||x|| per sample; a zero sample stays zero."""
  return x / jnp.maximum(_norm(x), jnp.finfo(x.dtype).tiny)


def _authors_unit(x: jax.Array) -> jax.Array:
  """x / (||x|| + 1e-8) per sample, the authors' `_l2_normalize`: a unit vector only where
  ||x|| >> 1e-8, much shorter where x is smaller."""
  return x / (_norm(x) + 1e-8)


def resolved_vat_method(method: str) -> str:
  """The power iteration `method` ('auto', 'finite_difference' or 'hvp') stands for.

  'auto' is 'finite_difference' (the paper's, at the authors' xi = 1e-6) where matmuls run
  in float32, as on the CPU and in the authors' PyTorch, and 'hvp' on GPUs and TPUs, whose
  default precision rounds a float32 matmul's operands to TF32 or bfloat16. The cosine of
  the finite-difference direction with the exact one is near 0 under TF32 or bfloat16, and
  at VOC's size in float32 too, where 'hvp' stays at 1.00 (measured:
  benchmarks/results/design_measurements.json). So under TF32 or bfloat16 the finite
  difference is noise; at VOC's size it is in float32 too (xi * d, about 1e-9 a
  component, vanishes against z's float32 resolution): the authors' I-VAT was close to a
  direction of noise, whose length their normalisation shrank to far below eps
  (`adversarial_direction`); 'finite_difference' keeps that behaviour.
  """
  if method not in VAT_METHODS:
    raise ValueError(f'vat method {method!r} not in {VAT_METHODS}')
  if method == 'auto':
    return 'finite_difference' if jax.default_backend() == 'cpu' else 'hvp'
  return method


def adversarial_direction(logits_fn, x, key, *, method: str, xi: float, iterations: int,
                          normalisation: str = 'exact') -> jax.Array:
  """The unit direction (per sample, over all but the batch axis) in which a small change
  of `x` changes the prediction most: VAT's power iteration (Miyato et al.; paper App. G,
  Eqs. 13-15), on the encoder output z (I-VAT) or on the input image (input VAT).

  It iterates on the Hessian of D(r) = KL(p || q(x + r)) at r = 0, with
  p = stop_gradient(softmax(logits_fn(x))) and q = softmax(logits_fn(.)):
    'finite_difference' (the paper's and the authors' code): d <- grad_d D(xi * d),
      normalised.
    'hvp': d <- H d exactly, as `jax.jvp` of `jax.grad` (no xi).
    'auto': see `resolved_vat_method`.
  D sums over the batch; with a per-sample `logits_fn` each sample's gradient depends on
  that sample only, so the per-sample normalisation gives each sample its own direction.
  A sample whose power step gives exactly zero keeps a zero direction. The direction is a
  constant to any outer gradient (as the authors' `d.grad`).

  `normalisation`:
    'exact' (the paper's text, Eq. 15): a normal start and every step scaled to unit norm,
      so eps * d has norm eps exactly.
    'authors' (their `models/decoders.py`): a U(-0.5, 0.5) start, and the gradient of their
      batch-mean KL at xi * d divided by its norm + 1e-8 (with 'hvp', H d times xi^2, the
      same quantity). That gradient is about xi^2 ||H d||: at VOC's size and
      initialisation far below 1e-8, so d is far shorter than 1 and I-VAT barely
      perturbs z (benchmarks/results/vat_normalisation.json).
  """
  if normalisation not in VAT_NORMALISATIONS:
    raise errors.UserError(f'vat normalisation {normalisation!r} not in {VAT_NORMALISATIONS}')
  method = resolved_vat_method(method)
  x_fixed = jax.lax.stop_gradient(x)
  log_p = jax.lax.stop_gradient(jax.nn.log_softmax(logits_fn(x_fixed)))

  def divergence(r):
    log_q = jax.nn.log_softmax(logits_fn(x_fixed + r))
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q))

  if method == 'finite_difference':
    power_step = lambda d: jax.grad(lambda d: divergence(xi * d))(d)
  else:
    origin = jnp.zeros_like(x_fixed)
    hessian_times = lambda d: jax.jvp(jax.grad(divergence), (origin,), (d,))[1]
    # The finite difference's gradient at small xi is xi^2 H d: the authors' rule sees it.
    power_step = (hessian_times if normalisation == 'exact'
                  else lambda d: xi * xi * hessian_times(d))

  if normalisation == 'exact':
    d = _unit(jax.random.normal(key, x.shape, x.dtype))
    for _ in range(iterations):
      d = _unit(power_step(d))
  else:
    d = _authors_unit(jax.random.uniform(key, x.shape, x.dtype, -0.5, 0.5))
    for _ in range(iterations):
      d = _authors_unit(power_step(d) / x.shape[0])  # 'batchmean': their KL over B
  return jax.lax.stop_gradient(d)


def _check_vat(hyper_parameters: dict) -> None:
  if hyper_parameters['method'] not in VAT_METHODS:
    raise errors.UserError(f"perturbations.vat.method {hyper_parameters['method']!r} not in "
                           f'{VAT_METHODS}')
  if hyper_parameters['normalisation'] not in VAT_NORMALISATIONS:
    raise errors.UserError(f"perturbations.vat.normalisation "
                           f"{hyper_parameters['normalisation']!r} not in {VAT_NORMALISATIONS}")


@register('vat', dict(count=2, method='auto', xi=1e-6, eps=2.0, iterations=1,
                      normalisation='authors'), check=_check_vat)
def vat(z, key, main_prediction, decode, *, method: str, xi: float, eps: float,
        iterations: int, normalisation: str):
  """I-VAT (paper App. G): z~ = z + r_adv, r_adv = eps * `adversarial_direction` of the
  auxiliary decoder that owns it. With `normalisation='exact'` (the paper's Eq. 15)
  ||r_adv|| = eps per sample (0 where the direction is zero); with 'authors' (the default:
  the code behind the paper's tables) it is eps times the length of their normalised
  gradient, far below eps at VOC's size (`adversarial_direction`).

  Neither the encoder nor the decoder gets a gradient through r_adv: the encoder is
  trained through z only.
  """
  del main_prediction
  return z + eps * adversarial_direction(decode, z, key, method=method, xi=xi,
                                         iterations=iterations, normalisation=normalisation)


# --------------------------------------------------------------------------------------
# The config section.


def default_perturbation_config() -> ml_collections.ConfigDict:
  """`config.perturbations`: every registered perturbation's block, and the shared fields."""
  cfg = ml_collections.ConfigDict()
  cfg.background_class = 0  # of the guided masks and G-Cutout
  for name, registered in PERTURBATIONS.items():
    cfg[name] = ml_collections.ConfigDict(registered.block)
  return cfg


def _blocks(cfg) -> dict[str, ml_collections.ConfigDict]:
  """The section's perturbation blocks by name, in name order: the order in which the
  model stacks their decoders (the pairwise loss's random choice of 8 depends on it)."""
  blocks = {name: value for name, value in cfg.items()
            if isinstance(value, ml_collections.ConfigDict)}
  unknown = sorted(blocks.keys() - PERTURBATIONS.keys())
  if unknown:
    raise errors.UserError(f'unknown perturbation types {unknown}; the registered ones are '
                           f'{sorted(PERTURBATIONS)}')
  missing = sorted(PERTURBATIONS.keys() - blocks.keys())
  if missing:
    raise errors.UserError(f'perturbations: no config block for {missing}')
  return {name: blocks[name] for name in sorted(blocks)}


def decoder_counts(cfg) -> dict[str, int]:
  """Perturbation type -> its number of auxiliary decoders (0 included), in name order."""
  return {name: block.count for name, block in _blocks(cfg).items()}


def set_counts(cfg, counts: Mapping[str, int]) -> None:
  """Sets the count of every type `counts` names (in place); the others keep theirs."""
  blocks = _blocks(cfg)
  unknown = sorted(counts.keys() - blocks.keys())
  if unknown:
    raise errors.UserError(f'unknown perturbation types {unknown}')
  for name, count in counts.items():
    blocks[name].count = count


def _hyper_parameters(cfg, name: str, block) -> dict:
  """The keyword-only arguments of perturbation `name`: its block's values, then the
  section's shared fields for those its block lacks."""
  registered = PERTURBATIONS[name]
  wanted = [p.name for p in inspect.signature(registered.perturb).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY]
  given = {k: v for k, v in block.items() if k != 'count'}
  stray = sorted(given.keys() - set(wanted))
  if stray:
    raise errors.UserError(f'perturbations.{name}: no hyper-parameter {stray[0]!r} '
                           f'({registered.perturb.__name__} takes {wanted})')
  shared = [k for k in wanted if k not in given]
  absent = [k for k in shared if k not in cfg]
  if absent:
    raise errors.UserError(f'perturbations: {name} needs {absent[0]!r}, in its block or shared')
  hyper_parameters = {**given, **{k: cfg[k] for k in shared}}
  if registered.check is not None:
    registered.check(hyper_parameters)
  return hyper_parameters


def build_perturbations(cfg) -> dict[str, Perturbation]:
  """Name -> perturb(z, key, main_prediction, decode) with its hyper-parameters bound, for
  every type with a positive count, in name order. Every block is checked, counted or not.
  """
  blocks = _blocks(cfg)
  bound = {name: functools.partial(PERTURBATIONS[name].perturb,
                                   **_hyper_parameters(cfg, name, block))
           for name, block in blocks.items()}
  return {name: fn for name, fn in bound.items() if blocks[name].count > 0}
