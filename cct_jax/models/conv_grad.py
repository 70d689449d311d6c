"""A 2-D convolution whose kernel gradient is computed as matrix products.

XLA:CPU lowers the kernel gradient of a convolution (a convolution over the batch and
spatial axes) to a path that often runs several times slower than the forward convolution
on these CPUs, while the input gradient runs about as fast as the forward one. The kernel
gradient is a sum over the kernel's taps of (input window)^T @ (output gradient): one
matmul per tap. benchmarks/conv_grad.py (2 quiet cores, 4 images, f32): a 1x1 256 -> 1024
conv at 41x41, forward 30 ms, kernel gradient by lax 369 ms, by matmuls 28 ms; the stem's
3x3 at 161x161, 50 / 670 / 206 ms; a dilated 3x3 of layer4, 337 / 1442 / 340 ms. Only at
layer1's size is lax's a little faster (49 against 56 ms); one rule serves every conv. Same
arithmetic, so the values agree with lax's to rounding (tests/test_models.py).

`conv_general_dilated` is a drop-in for `lax.conv_general_dilated` in `nn.Conv`; on the CPU
it takes this path for the convolutions the network has (NHWC / HWIO, any stride, padding
and kernel dilation, no input dilation or groups) and leaves the others to lax. GPUs and
TPUs keep lax's gradient: their libraries have fast kernel-gradient convolutions.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ('NHWC', 'HWIO', 'NHWC'))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, with the kernel gradient as one matmul per kernel tap on
  the CPU."""
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
  return lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation,
                                  dimension_numbers=_NHWC, precision=precision)


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
