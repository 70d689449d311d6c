"""A 2-D convolution for XLA:CPU: kernel gradient as matmuls, wide inputs in slices.

Two lowerings of XLA:CPU run well below the CPU's matmul speed, and this module routes
around both, computing the same sums in another order:

- The kernel gradient (a convolution over the batch and spatial axes) often runs several
  times slower than the forward convolution, while the input gradient runs about as fast.
  The kernel gradient is a sum over the kernel's taps of (input window)^T @ (output
  gradient): one matmul per tap. Only at layer1's size is lax's faster; one rule serves
  every conv.
- A spatial kernel over many input channels (PSP's 3x3 bottleneck reads 4096) runs well
  below the speed of narrower ones: the conv is computed as the sum of convs over slices of
  at most `IN_FEATURES_PER_SLICE` input channels (its input gradient, the transpose,
  likewise). 1x1 convs are left whole: slicing did not speed them up.

Measured: benchmarks/cpu_conv.py (results/cpu_conv.json) and
benchmarks/results/design_measurements.json.

The values agree with lax's to rounding (tests/test_models.py).

`conv_general_dilated` is a drop-in for `lax.conv_general_dilated` in `nn.Conv`: it takes
this path for the convolutions the network has (NHWC / HWIO, any stride, padding and kernel
dilation, no input dilation or groups) and leaves the others to lax. The model receives it
as its convolution when `model.cpu_conv` says so (`models.model_from_config`: by default
when the default backend is the CPU); GPUs and TPUs keep lax's convolutions, their
libraries have fast kernel-gradient convolutions.
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
  """`lax.conv_general_dilated` with the kernel gradient as one matmul per kernel tap and a
  wide spatial kernel as a sum over input-channel slices."""
  dilation = tuple(rhs_dilation or (1,) * (lhs.ndim - 2))
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if (lhs.ndim != 4 or numbers != _NHWC
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
  """d loss / d kernel of an NHWC conv: per tap, the input positions the tap read, as an
  (N, C_in) matrix, transposed times the (N, C_out) output gradient (f32 sums).

  Each tap needs one side shifted by the tap's offset, a copy. Shifting the input copies
  C_in channels a tap; when a stride-1 conv keeps the spatial size and has fewer output
  channels (PSP's bottleneck: 4096 -> 512), the output gradient is shifted the other way
  instead, copying C_out: input position q pairs with output position q + low padding -
  offset, zero where that falls outside the output."""
  kernel_h, kernel_w, in_features, out_features = kernel_shape
  taps = [(i * dilation[0], j * dilation[1]) for i in range(kernel_h) for j in range(kernel_w)]
  if strides == (1, 1) and grad_out.shape[1:3] == x.shape[1:3] and out_features < in_features:
    reach = taps[-1]  # the last tap's offset: how far the kernel spans
    shifted = lax.pad(grad_out, jnp.zeros((), grad_out.dtype),
                      ((0, 0, 0), (reach[0] - padding[0][0], reach[0] - padding[0][1], 0),
                       (reach[1] - padding[1][0], reach[1] - padding[1][1], 0), (0, 0, 0)))
    windows = _windows(shifted, [(reach[0] - h, reach[1] - w) for h, w in taps],
                       x.shape[1:3], (1, 1))
    fixed = x.reshape(-1, in_features)
    grads = [jnp.matmul(fixed.T, window, preferred_element_type=jnp.float32)
             for window in windows]
  else:
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    windows = _windows(padded, taps, grad_out.shape[1:3], strides)
    fixed = grad_out.reshape(-1, out_features)
    grads = [jnp.matmul(window.T, fixed, preferred_element_type=jnp.float32)
             for window in windows]
  return jnp.stack(grads).reshape(kernel_shape)


def _windows(array, starts, size, strides):
  """The (N * size, C) matrices of `array`'s strided spatial windows from each start."""
  batch, features = array.shape[0], array.shape[-1]
  for start_h, start_w in starts:
    stop = (batch, start_h + strides[0] * (size[0] - 1) + 1,
            start_w + strides[1] * (size[1] - 1) + 1, features)
    yield lax.slice(array, (0, start_h, start_w, 0), stop, (1, *strides, 1)).reshape(-1, features)


_conv.defvjp(_conv_forward, _conv_backward)
