"""A 2-D convolution for XLA:CPU: kernel gradient as matmuls, wide inputs in slices.

Two lowerings of XLA:CPU run well below the matmul speed of these CPUs, and this module
routes around both, computing the same sums in another order:

- The kernel gradient (a convolution over the batch and spatial axes) often runs several
  times slower than the forward convolution, while the input gradient runs about as fast.
  The kernel gradient is a sum over the kernel's taps of (input window)^T @ (output
  gradient): one matmul per tap. benchmarks/cpu_conv.py (2 quiet cores, 4 images, f32): a
  1x1 256 -> 1024 conv at 41x41, forward 29 ms, kernel gradient by lax 397 ms, by matmuls
  34 ms; a dilated 3x3 of layer4, 325 / 2184 / 323 ms. Only at layer1's size is lax's
  faster (45 against 70 ms); one rule serves every conv.
- A spatial kernel over many input channels (PSP's 3x3 bottleneck reads 4096) runs well
  below the speed of narrower ones (in a profile of inference, 82 against 110-130 GFLOP/s):
  the conv is computed as the sum of convs over slices of at most `IN_FEATURES_PER_SLICE`
  input channels (its input gradient, the transpose, likewise). The full model's semi step
  (2 + 2 at 321), one after the other: 31.7 s whole, 30.4 s sliced. 1x1 convs are left
  whole: slicing did not speed them up.

The values agree with lax's to rounding (tests/test_models.py).

`conv_general_dilated` is a drop-in for `lax.conv_general_dilated` in `nn.Conv`; on the CPU
it takes this path for the convolutions the network has (NHWC / HWIO, any stride, padding
and kernel dilation, no input dilation or groups) and leaves the others to lax. GPUs and
TPUs keep lax's convolutions: their libraries have fast kernel-gradient convolutions.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ('NHWC', 'HWIO', 'NHWC'))
IN_FEATURES_PER_SLICE = 512


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`; on the CPU with the kernel gradient as one matmul per
  kernel tap and a wide spatial kernel as a sum over input-channel slices."""
  dilation = tuple(rhs_dilation or (1,) * (lhs.ndim - 2))
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if (jax.default_backend() != 'cpu' or lhs.ndim != 4 or numbers != _NHWC
      or any(d != 1 for d in lhs_dilation or (1, 1)) or feature_group_count != 1
      or batch_group_count != 1 or preferred_element_type is not None):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type)
  if isinstance(padding, str):
    window = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], dilation)]
    padding = lax.padtype_to_pads(lhs.shape[1:3], window, window_strides, padding)
  padding = tuple(tuple(p) for p in padding)
  return _conv(lhs, rhs, tuple(window_strides), padding, dilation, precision)


def _lax_conv(x, kernel, strides, padding, dilation, precision):
  conv = lambda x_, kernel_: lax.conv_general_dilated(
      x_, kernel_, strides, padding, rhs_dilation=dilation, dimension_numbers=_NHWC,
      precision=precision)
  in_features, width = x.shape[-1], IN_FEATURES_PER_SLICE
  if kernel.shape[:2] == (1, 1) or in_features <= width:
    return conv(x, kernel)
  parts = [conv(x[..., s:s + width], kernel[:, :, s:s + width])
           for s in range(0, in_features, width)]
  return sum(parts[1:], parts[0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, kernel, strides, padding, dilation, precision):
  return _lax_conv(x, kernel, strides, padding, dilation, precision)


def _conv_forward(x, kernel, strides, padding, dilation, precision):
  return _lax_conv(x, kernel, strides, padding, dilation, precision), (x, kernel)


def _conv_backward(strides, padding, dilation, precision, residuals, grad_out):
  x, kernel = residuals
  # The conv is linear in x: transposing it gives the input gradient without recomputing
  # the forward (as jax.vjp would).
  input_transpose = jax.linear_transpose(
      lambda x_: _lax_conv(x_, kernel, strides, padding, dilation, precision),
      jax.ShapeDtypeStruct(x.shape, x.dtype))
  kernel_grad = kernel_gradient(x, grad_out, kernel.shape, strides, padding, dilation)
  return input_transpose(grad_out)[0], kernel_grad.astype(kernel.dtype)


def kernel_gradient(x, grad_out, kernel_shape, strides, padding, dilation):
  """d loss / d kernel of an NHWC conv: per tap (i, j), the input positions that tap read,
  as an (N, C_in) matrix, transposed times the (N, C_out) output gradient (f32 sums)."""
  kernel_h, kernel_w, in_features, out_features = kernel_shape
  batch, out_h, out_w, _ = grad_out.shape
  padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  grad_matrix = grad_out.reshape(-1, out_features)
  taps = []
  for i in range(kernel_h):
    for j in range(kernel_w):
      start = (0, i * dilation[0], j * dilation[1], 0)
      stop = (batch, start[1] + strides[0] * (out_h - 1) + 1,
              start[2] + strides[1] * (out_w - 1) + 1, in_features)
      window = lax.slice(padded, start, stop, (1, *strides, 1)).reshape(-1, in_features)
      taps.append(jnp.matmul(window.T, grad_matrix, preferred_element_type=jnp.float32))
  return jnp.stack(taps).reshape(kernel_shape)


_conv.defvjp(_conv_forward, _conv_backward)
