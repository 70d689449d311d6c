"""The encoder alone (dilated ResNet-50 trunk + PSP, configs/voc.py's), forward and backward
with remat, at one v5e chip's share of VOC's step (10 images of 320 x 320, bf16, batch
statistics), compiled for a v5e on this CPU: XLA's estimate (`compile_report.estimate`,
the compiler's model, not a measurement), its MFU and its costliest instructions.

  TPU_LIBRARY_PATH=.venv/libtpu/libtpu/libtpu.so JAX_PLATFORMS=cpu \\
  .venv/bin/python benchmarks/tpu_encoder.py

The encoder does nearly all of the train step's FLOPs (the decoders' 1x1 layers are a
fraction of a percent of them), so its MFU bounds the step's: whatever the decoders and
losses cost, the step's MFU cannot pass the encoder's. Writes
benchmarks/results/tpu_encoder.json.
"""

import json
import os

import jax
import jax.numpy as jnp

from cct_jax import compile_report
from cct_jax.models.cct import Encoder

RESULTS = os.path.join(os.path.dirname(__file__), 'results', 'tpu_encoder.json')
IMAGES, SIDE, Z_SIDE, FEATURES = 10, 320, 40, 512


def main():
  device = jax.sharding.SingleDeviceSharding(compile_report.topology_devices('v5e:1x1')[0])
  chip = compile_report.CHIPS['v5e']
  encoder = Encoder(dtype=jnp.bfloat16, remat=True)
  spec = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype, sharding=device)
  variables = jax.tree.map(lambda a: spec(a.shape), jax.eval_shape(
      lambda: encoder.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))))

  def loss(params, batch_stats, images, cotangent):
    z, updates = encoder.apply({'params': params, 'batch_stats': batch_stats}, images,
                               train=True, mutable=['batch_stats'])
    return jnp.sum(z.astype(jnp.float32) * cotangent), updates

  compiled = jax.jit(jax.grad(loss, has_aux=True)).lower(
      variables['params'], variables['batch_stats'], spec((IMAGES, SIDE, SIDE, 3)),
      spec((IMAGES, Z_SIDE, Z_SIDE, FEATURES))).compile()
  cost = compile_report.cost_of(compiled)
  result = compile_report.estimate(compiled.as_text(), cost, IMAGES, chip.clock_hz,
                                   chip.bf16_flops, chip.hbm_bandwidth, top=10)
  result['flops_bound_s'] = float(cost['flops']) / chip.bf16_flops
  print(f"encoder, {IMAGES} images of {SIDE}, forward and backward with remat, one v5e: "
        f"XLA's estimate {1e3 * result['step_s']:.1f} ms, FLOPs bound "
        f"{1e3 * result['flops_bound_s']:.1f} ms, HBM bound {1e3 * result['hbm_bound_s']:.1f}"
        f" ms, MFU {100 * result['mfu']:.1f}%")
  print('\n'.join(compile_report.top_lines(result)))
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, 'w') as f:
    json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
