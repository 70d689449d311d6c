"""The CCT network (paper sec. 3.2, Fig. 3): shared encoder, main decoder, and K auxiliary
decoders that each see their own perturbed copy of z.

Auxiliary decoders of one perturbation type are stored as one stacked parameter tree (a
leading axis of size K) and run under `jax.vmap`: one batched computation per type instead
of K copies in the graph (measured in `benchmarks/aux_decoders.py`), or one after the
other with model.remat. The perturbation functions come from the caller, and the model
returns the auxiliary decoders unrun (`StackedDecoders`) for the losses to run: this
module knows nothing of how z is perturbed or what the losses take of each decoder.
"""

import functools
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct, traverse_util
from jax import lax

from cct_jax import losses
from cct_jax.models import padding
from cct_jax.models.decoders import DecoderSpec, sub_pixel_logits
from cct_jax.models.psp import PSP
from cct_jax.models.resnet import Convolution, ResNet

# The collection of the diagnostics a model sows (nothing trains on them).
METRICS = 'metrics'

# perturb(z, key, main_prediction, decode) -> perturbed z; `main_prediction` is the main
# decoder's argmax (B, H, W) at its resolution, `decode` the owning auxiliary decoder as a
# pure function of z (I-VAT differentiates through it).
Perturbation = Callable[[jax.Array, jax.Array, jax.Array, Callable[[jax.Array], jax.Array]],
                        jax.Array]


def identity_perturbation(z, key, main_prediction, decode):
  del key, main_prediction, decode
  return z


def align_corners_matrix(size_out: int, size_in: int) -> np.ndarray:
  """(size_out, size_in) weights of 1-D linear interpolation with align_corners=True."""
  weights = np.zeros((size_out, size_in), np.float32)
  scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
  for i in range(size_out):
    src = i * scale
    lo = min(int(np.floor(src)), size_in - 1)
    hi = min(lo + 1, size_in - 1)
    weights[i, lo] += 1.0 - (src - lo)
    weights[i, hi] += src - lo
  return weights


def resize_logits(logits: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear resize of (..., h, w, C) with align_corners=True, as the authors' model does
  when the decoder's 8x output (328 for a 321 input) differs from the input size."""
  h, w = logits.shape[-3:-1]
  if (h, w) == tuple(size):
    return logits
  rows = jnp.asarray(align_corners_matrix(size[0], h), logits.dtype)
  cols = jnp.asarray(align_corners_matrix(size[1], w), logits.dtype)
  return jnp.einsum('ph,...hwc,qw->...pqc', rows, logits, cols)


def resize_each_logits(logits: jax.Array, z_shape: Sequence[int], size: Sequence[int],
                       sizes: jax.Array) -> jax.Array:
  """`resize_logits` for a padded batch of images of `sizes` (B, 2) (models/padding.py),
  into a (B, *size, C) canvas. Alone, an image's whole decoder output is resized to its
  size up to a multiple of 8; in the canvas that output is the image's own region (at
  output stride 16, x8 its ceil(size / 16) rows of z), which resizing the whole canvas
  would stretch by the canvas's ratio instead."""
  if logits.shape[-3:-1] == tuple(size):  # output stride 4 or 8: nothing to resize
    return logits
  # The pixel shuffles scale each image's region of z as they scale z: the decoders'
  # resolution is no stride of the canvas (8 x ceil(40 / 16) = 24 rows of 40).
  own = padding.extents(sizes, size, z_shape) * (logits.shape[-3] // z_shape[0])
  return padding.resize_each(logits, own, padding.alone_sizes(sizes), size, align_corners=True)


def feature_rows(image_rows: int, output_stride: int) -> int:
  """z's rows for images of `image_rows`: every stride-2 layer takes ceil(n / 2)."""
  return -(-image_rows // output_stride)


def pixel_pairing(labels: jax.Array, logits_shape: Sequence[int], rows: int):
  """How a per-pixel loss pairs labels (B, H, W) of the images with logits in sub-pixel
  order of `logits_shape` (B, h w, 4^n, C) (`CCT` with sub_pixel, the auxiliary
  decoders), h = `rows`: returns the labels and a function of such logits, the two in one
  pixel order. Where the labels have the decoders' resolution (output stride 4 or 8,
  sides multiples of 8), the labels are put in sub-pixel order, once for any number of
  decoders, and the logits stay as they are; else the logits are put back in pixel order
  and resized to the labels, as `CCT` resizes its main logits."""
  levels = (logits_shape[2].bit_length() - 1) // 2
  side = 2**levels
  if labels.shape[1:3] == (side * rows, side * (logits_shape[1] // rows)):
    return losses.sub_pixel_order(labels, levels), lambda logits: logits
  return labels, lambda logits: resize_logits(losses.pixel_order(logits, levels, rows),
                                              labels.shape[1:3])


class Encoder(nn.Module):
  """Dilated ResNet trunk + PSP -> z (B, H/8, W/8, psp_features)."""
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  stem: str = 'deep'
  output_stride: int = 8
  psp_features: int = 512
  psp_bins: Sequence[int] = (1, 2, 3, 6)
  # Of the computation (bfloat16: mixed precision); parameters and batch statistics stay
  # float32, and CCT returns float32 logits, so losses are computed in float32.
  dtype: jnp.dtype = jnp.float32
  # How the trunk's and PSP's convolutions are computed; the same sums either way.
  convolution: Convolution = lax.conv_general_dilated
  remat: bool = False  # see ResNet.remat

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               sizes: jax.Array | None = None) -> jax.Array:
    """`sizes` (B, 2): each image's height and width in a batch padded at the bottom and
    right to one size, each then computed as if alone (models/padding.py); None: the
    images fill the batch."""
    canvas = x.shape[1:3]
    features = ResNet(self.stage_sizes, self.width, self.stem, self.output_stride, self.dtype,
                      self.convolution, self.remat, name='trunk')(
                          x.astype(self.dtype), train,
                          zero_padding=padding.zero_padding(sizes, canvas))
    valid = None if sizes is None else padding.extents(sizes, canvas, features.shape[1:3])
    return PSP(self.psp_features, self.psp_bins, self.dtype, self.convolution,
               name='psp')(features, train, valid)


def perturbation_type_key(key: jax.Array, name: str) -> jax.Array:
  """The key of one perturbation type's decoders, split once more per decoder.

  It depends on the type's name, not its position in the roster: enabling or disabling one
  type leaves the others' randomness unchanged.
  """
  return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def decoder_upsamples(output_stride: int) -> int:
  """x2 blocks per decoder: back to the input size at output stride 4 or 8; at 16, 8x as
  the authors' fixed `upscale=8`, and the last factor of 2 is a bilinear resize."""
  return min(output_stride, 8).bit_length() - 1


def gradients_in_forward(fn: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, Any]]:
  """`fn(params, x, *constants) -> (values, extra)`, whose gradient with respect to `params`
  and `x` is computed as it runs: its forward pass takes the gradient of each of `values`
  (a pytree of scalars) and keeps only those, and the backward pass weighs them by the
  values' cotangents. `extra` and `constants` get no gradient.

  In a loop over auxiliary decoders (`StackedDecoders.map`) this keeps what
  `jax.checkpoint` keeps alive, inputs-sized values rather than full-resolution maps, but
  runs each decoder forward once, not again in the backward pass: by XLA's TPU model the
  VOC step takes 341 ms instead of 372 (README, "Raising the estimated MFU"). It keeps
  one gradient of x per value (z's size, not a full-resolution map), where checkpointing
  keeps none: in a loop, one per decoder (2.4 GB for VOC's 30 at 48 images per chip).
  """

  def value_gradients(params, x, *constants):
    values, pullback, extra = jax.vjp(lambda p, h: fn(p, h, *constants), params, x,
                                      has_aux=True)
    leaves, tree = jax.tree.flatten(values)
    if any(jnp.ndim(leaf) for leaf in leaves):
      raise ValueError('gradients_in_forward takes scalar values only')
    basis = lambda i: jax.tree.unflatten(tree, [jnp.ones_like(leaf) if j == i else
                                                jnp.zeros_like(leaf)
                                                for j, leaf in enumerate(leaves)])
    return (values, extra), [pullback(basis(i)) for i in range(len(leaves))]

  def backward(constant_count, gradients, cotangents):
    weights = jax.tree.leaves(cotangents[0])
    weighted = jax.tree.map(
        lambda *per_value: sum(w * g for w, g in zip(weights, per_value)).astype(
            per_value[0].dtype), *gradients)
    return (*weighted, *(None,) * constant_count)

  def run(params, x, *constants):
    compute = jax.custom_vjp(fn)
    compute.defvjp(value_gradients, functools.partial(backward, len(constants)))
    return compute(params, x, *constants)

  return run


@struct.dataclass
class StackedDecoders:
  """What the losses need of one perturbation type's K auxiliary decoders: their stacked
  parameters and keys, z and the main prediction they perturb, and how to run one.

  `map(fn)` runs the decoders and hands each one's logits to `fn`, so that the caller
  takes what it needs per decoder (a loss, the logits themselves) without the model
  knowing which. With `one_at_a_time` (model.remat 'decoders') they run one after the
  other, and each one's gradient is taken as it runs (`gradients_in_forward`): only one
  decoder's full-resolution maps are alive at a time, if `fn` keeps no map of them, and
  none is computed twice.
  """
  params: Any  # one Decoder's parameters, each with a leading axis of size K
  keys: jax.Array  # (K,): each decoder's perturbation key
  z: jax.Array
  main_prediction: jax.Array  # (B, H, W) the main decoder's argmax, for the guided masks
  decoder: nn.Module = struct.field(pytree_node=False)  # free-standing: apply is pure
  perturb: Perturbation = struct.field(pytree_node=False)
  name: str = struct.field(pytree_node=False)  # the perturbation type's
  one_at_a_time: bool = struct.field(pytree_node=False, default=False)

  def map(self, fn: Callable[[jax.Array], Any]):
    """fn(one decoder's logits in sub-pixel order (B, h w, 4^n, C), float32: see
    `decoders.sub_pixel_logits`) -> a pytree; returns its values stacked per decoder
    (K, ...) and the size of each perturbation, ||z~ - z|| per decoder and sample (K, B).
    """

    def perturb_and_decode(params, z, key, main_prediction):
      # I-VAT's decodes too: its divergence is a sum over pixels, the same in any order.
      decode = lambda h: sub_pixel_logits(self.decoder, params, h)
      z_tilde = self.perturb(z, key, main_prediction, decode)
      size = jnp.sqrt(jnp.sum(jnp.square((z_tilde - z).astype(jnp.float32)), axis=(1, 2, 3)))
      return fn(decode(z_tilde).astype(jnp.float32)), size

    # Run by the caller, outside the model's scopes: named as the model's, so that the
    # compiled program's instructions say which decoders they come from (compile_report).
    # A transformation takes the outermost scope into its own name (`jvp(...)`).
    with (jax.named_scope('StackedDecoders.map'), jax.named_scope('aux_decoders'),
          jax.named_scope(self.name)):
      if self.one_at_a_time:
        one = gradients_in_forward(perturb_and_decode)
        return jax.lax.map(lambda args: one(args[0], self.z, args[1], self.main_prediction),
                           (self.params, self.keys))
      return jax.vmap(perturb_and_decode, in_axes=(0, None, 0, None))(
          self.params, self.z, self.keys, self.main_prediction)


class DecoderStack(nn.Module):
  """`count` decoders of one perturbation type, as one stacked parameter tree."""
  count: int
  spec: DecoderSpec
  remat: bool = False  # see StackedDecoders.one_at_a_time

  @nn.compact
  def __call__(self, z: jax.Array, key: jax.Array, main_prediction: jax.Array,
               perturb: Perturbation) -> StackedDecoders:
    # parent=None: a free-standing module whose `apply` is a pure function of its params.
    decoder = self.spec.build(parent=None)
    init_stack = lambda rng: jax.vmap(lambda r: decoder.init(r, z[:1])['params'])(
        jax.random.split(rng, self.count))
    return StackedDecoders(self.param('decoders', init_stack),
                           jax.random.split(key, self.count), z, main_prediction, decoder,
                           perturb, self.name, self.remat)


class AuxiliaryDecoders(nn.Module):
  """One `DecoderStack` per perturbation type with a non-zero count."""
  counts: Mapping[str, int]
  spec: DecoderSpec
  remat: bool = False  # see StackedDecoders.one_at_a_time

  @nn.compact
  def __call__(self, z, key, main_prediction,
               perturbations: Mapping[str, Perturbation]) -> dict[str, StackedDecoders]:
    return {name: DecoderStack(count, self.spec, self.remat, name=name)(
                                   z, perturbation_type_key(key, name), main_prediction,
                                   perturbations[name])
            for name, count in self.counts.items() if count > 0}


class CCT(nn.Module):
  """`encoder` + main decoder + auxiliary decoders (`aux_counts`: type name -> K).

  `__call__(x, train, perturbations, key)` returns `(main_logits, aux)`: the main logits
  at the input size, and aux maps each perturbation type to its `StackedDecoders`, which
  the losses run; it is empty when no perturbations are given (labelled batches,
  evaluation). With `sub_pixel=True` the main logits stay at the decoders' resolution (8x
  z: 328 for a 321 input), where the authors' code compares them with the auxiliary
  decoders', in the auxiliary decoders' sub-pixel order (B, h w, 4^n, C)
  (`decoders.sub_pixel_logits`): the losses put their targets in that order
  (`pixel_pairing`), where putting the logits in pixel order would transpose a
  full-resolution map. The perturbations get the main prediction's argmax, computed once
  for all of them.
  The decoders compute in the encoder's dtype; the logits come back in float32.
  """
  num_classes: int
  encoder: Encoder = Encoder()
  aux_counts: Mapping[str, int] = None
  final_relu: bool = True
  decoder_width: int = 0  # see Decoder.width
  remat_decoders: bool = False  # see StackedDecoders.one_at_a_time

  def setup(self):
    upsamples = decoder_upsamples(self.encoder.output_stride)
    spec = DecoderSpec(self.num_classes, upsamples, self.final_relu, self.decoder_width,
                       self.encoder.dtype)
    self.main_decoder = spec.build()
    self.aux_decoders = AuxiliaryDecoders(dict(self.aux_counts or {}), spec,
                                          self.remat_decoders)

  def __call__(self, x: jax.Array, train: bool = False,
               perturbations: Mapping[str, Perturbation] | None = None,
               key: jax.Array | None = None, sub_pixel: bool = False,
               sizes: jax.Array | None = None):
    """`sizes`: see `Encoder`."""
    return self.decode(self.encoder(x, train, sizes), None if sub_pixel else x.shape[1:3],
                       perturbations, key, sizes)

  def decode(self, z: jax.Array, size: Sequence[int] | None,
             perturbations: Mapping[str, Perturbation] | None = None,
             key: jax.Array | None = None, sizes: jax.Array | None = None):
    """`(main_logits, aux)`, the main logits at `size` (None: at the decoders' resolution
    in sub-pixel order, see the class), from the encoder's output z: the decoders alone,
    for a caller that runs the encoder itself (the multi-domain model shares one).
    `sizes`: the images' in a padded batch (see `Encoder`), `size` then the batch's."""
    if size is None:
      if self.is_initializing():
        self.main_decoder(z)  # creates its parameters
      with jax.named_scope('main_decoder'):  # as its module's own ops are named
        main_logits = sub_pixel_logits(self.main_decoder,
                                       self.main_decoder.variables['params'], z)
      pixel_order = lambda labels: losses.pixel_order(
          labels, decoder_upsamples(self.encoder.output_stride), z.shape[1])
    else:
      main_logits, pixel_order = self.main_decoder(z), lambda labels: labels
    aux = {}
    if perturbations is not None:
      prediction = pixel_order(jnp.argmax(main_logits, axis=-1))
      aux = self.aux_decoders(z, key, prediction, perturbations)
    main_logits = main_logits.astype(jnp.float32)
    if size is None:
      return main_logits, aux
    if sizes is None:
      return resize_logits(main_logits, size), aux
    return resize_each_logits(main_logits, z.shape[1:3], size, sizes), aux


def sown(updates: Sequence[Mapping], collection: str = METRICS) -> dict[str, jax.Array]:
  """The values sown into `collection` (the diagnostics in `METRICS`; the multi-domain
  discriminator's loss term in 'losses') by the `apply` passes that left `updates` (their
  mutable collections), by name (the last key of the path), averaged over the sowings."""
  sown_values = {}
  for collections in updates:
    flat = traverse_util.flatten_dict(dict(collections.get(collection, {})))
    for path, values in flat.items():
      sown_values.setdefault(path[-1], []).extend(values)
  return {name: sum(values) / len(values) for name, values in sown_values.items()}


def init_variables(model: CCT, key: jax.Array, image_shape: Sequence[int]):
  """All variables of `model`, auxiliary decoders included, for a (B, H, W, 3) batch."""
  perturbations = {name: identity_perturbation for name in (model.aux_counts or {})}
  x = jnp.zeros(image_shape, jnp.float32)
  return model.init({'params': key}, x, train=False, perturbations=perturbations, key=key)
