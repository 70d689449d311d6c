"""Convolutions on XLA:CPU: lax's against `cct_jax.cpu_conv`'s.

  .venv/bin/python benchmarks/cpu_conv.py        # minutes

For convolutions of the full VOC network (2 + 2 images of 321x321: batch 4; the deep stem,
layer1's 3x3, a strided 3x3, the 1x1s of layer3, a dilated 3x3 of layer4, PSP's 3x3
bottleneck over 4096 channels), the best of 3 wall times of the forward conv by lax and by
cpu_conv (which slices wide inputs), lax's input gradient, the kernel gradient by lax
(`jax.vjp`) and by cpu_conv's matmuls, and forward + both gradients by each.
Prints a table and writes benchmarks/results/cpu_conv.json. Run nothing else meanwhile.
"""

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
from jax import lax

from cct_jax import cpu_conv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'benchmarks', 'results', 'cpu_conv.json')
NHWC = ('NHWC', 'HWIO', 'NHWC')
# (where, input side, in channels, out channels, kernel, stride, dilation)
SHAPES = [
    ('stem conv2 (3x3)', 161, 64, 64, 3, 1, 1),
    ('layer1 3x3', 81, 64, 64, 3, 1, 1),
    ('layer2 first 3x3, stride 2', 81, 128, 128, 3, 2, 1),
    ('layer3 1x1 256 -> 1024', 41, 256, 1024, 1, 1, 1),
    ('layer3 1x1 1024 -> 256', 41, 1024, 256, 1, 1, 1),
    ('layer4 3x3, dilation 4', 41, 512, 512, 3, 1, 4),
    ('PSP bottleneck 3x3 4096 -> 512', 41, 4096, 512, 3, 1, 1),
]
BATCH = 4


def best_ms(fn, *args, repeats: int = 3) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1000 * min(times)


def measure(side, in_features, out_features, kernel, stride, dilation) -> dict:
  x = jax.random.normal(jax.random.key(0), (BATCH, side, side, in_features))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, in_features, out_features)) * 0.02
  pad = dilation * (kernel // 2)
  conv_args = ((stride, stride), ((pad, pad), (pad, pad)))
  conv_kwargs = dict(rhs_dilation=(dilation, dilation), dimension_numbers=NHWC)
  lax_conv = lambda x, w: lax.conv_general_dilated(x, w, *conv_args, **conv_kwargs)
  cpu_conv_ = lambda x, w: cpu_conv.conv_general_dilated(x, w, *conv_args, **conv_kwargs)
  grad_out = jnp.ones_like(jax.eval_shape(lax_conv, x, w))
  input_grad = jax.jit(lambda x, w, g: jax.vjp(lambda x_: lax_conv(x_, w), x)[1](g)[0])
  kernel_grad = lambda conv: jax.jit(lambda x, w, g: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0])
  both_grads = lambda conv: jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), (0, 1)))
  return dict(
      forward_lax_ms=best_ms(jax.jit(lax_conv), x, w),
      forward_cpu_conv_ms=best_ms(jax.jit(cpu_conv_), x, w),
      input_grad_lax_ms=best_ms(input_grad, x, w, grad_out),
      kernel_grad_lax_ms=best_ms(kernel_grad(lax_conv), x, w, grad_out),
      kernel_grad_cpu_conv_ms=best_ms(kernel_grad(cpu_conv_), x, w, grad_out),
      forward_backward_lax_ms=best_ms(both_grads(lax_conv), x, w),
      forward_backward_cpu_conv_ms=best_ms(both_grads(cpu_conv_), x, w))


def main():
  rows = []
  header = ('| conv | forward: lax | forward: cpu_conv | input grad | kernel grad: lax | '
            'kernel grad: matmuls | fwd + bwd: lax | fwd + bwd: cpu_conv | speed-up |')
  print(header + '\n' + '|---' * 9 + '|', flush=True)
  for name, *shape in SHAPES:
    row = dict(conv=name, batch=BATCH, side=shape[0], in_features=shape[1],
               out_features=shape[2], kernel=shape[3], stride=shape[4], dilation=shape[5],
               **measure(*shape))
    row['speed_up'] = row['forward_backward_lax_ms'] / row['forward_backward_cpu_conv_ms']
    rows.append(row)
    print(f"| {name} | {row['forward_lax_ms']:.0f} | {row['forward_cpu_conv_ms']:.0f} | "
          f"{row['input_grad_lax_ms']:.0f} | "
          f"{row['kernel_grad_lax_ms']:.0f} | {row['kernel_grad_cpu_conv_ms']:.0f} | "
          f"{row['forward_backward_lax_ms']:.0f} | {row['forward_backward_cpu_conv_ms']:.0f} | "
          f"{row['speed_up']:.2f}x |", flush=True)
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, 'w') as f:
    json.dump(dict(command='benchmarks/cpu_conv.py', unit='ms, best of 3',
                   machine=dict(platform=platform.platform(), cpu_count=os.cpu_count()),
                   jax=jax.__version__, rows=rows), f, indent=1)
  print(f'written to {RESULTS}')


if __name__ == '__main__':
  main()
