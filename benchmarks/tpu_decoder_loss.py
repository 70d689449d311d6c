"""One auxiliary decoder and its MSE consistency loss, forward and backward under
jax.checkpoint as `model.remat` runs each of the 30, at one v5e chip's share of VOC's
step (10 images, 40 x 40 x 512 features to 320 x 320 x 21), compiled for a v5e on this
CPU: XLA's estimate (`compile_report.estimate`, the compiler's model, not a measurement)
with the loss taken in the decoder's pixel order, in the last pixel shuffle's, in that
order against a target made once for all decoders, and with the logits computed in
sub-pixel order, without pixel shuffles (`decoders.sub_pixel_logits`, methods/cct.py).

  TPU_LIBRARY_PATH=.venv/libtpu/libtpu/libtpu.so JAX_PLATFORMS=cpu \\
  .venv/bin/python benchmarks/tpu_decoder_loss.py

The loss is a mean over pixels, so any order of the pixels gives it, if the main
decoder's target is put in the same order: reordering both into the order the last pixel
shuffle started from undoes that shuffle, and
XLA drops the pair of transposes and the full-resolution class-minor layouts they write.
The target comes already reordered (the cost of one decoder), and from the third on as
log-probabilities, as `methods.cct.decoder_losses` makes it once for all K decoders. The
last computes the logits in the order of all three shuffles (`sub_pixel_logits`), so no
shuffle is left to undo. Writes benchmarks/results/tpu_decoder_loss.json.
"""

import json
import os

import jax
import jax.numpy as jnp

from cct_jax import compile_report, losses
from cct_jax.models.decoders import Decoder, sub_pixel_logits

RESULTS = os.path.join(os.path.dirname(__file__), 'results', 'tpu_decoder_loss.json')
IMAGES, SIDE, FEATURES, CLASSES = 10, 40, 512, 21


def main():
  device = jax.sharding.SingleDeviceSharding(compile_report.topology_devices('v5e:1x1')[0])
  chip = compile_report.CHIPS['v5e']
  decoder = Decoder(CLASSES, dtype=jnp.bfloat16)
  spec = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype, sharding=device)
  z = spec((IMAGES, SIDE, SIDE, FEATURES), jnp.bfloat16)
  params = jax.tree.map(lambda a: spec(a.shape), jax.eval_shape(
      lambda: decoder.init(jax.random.key(0), jnp.zeros((1, SIDE, SIDE, FEATURES)))))
  natural = (IMAGES, 8 * SIDE, 8 * SIDE, CLASSES)
  # The order of the last shuffle's input alone, (B, H, W, 2, 2, C), as the step computed
  # the loss before sub-pixel logits.
  last_shuffle = lambda x: x.reshape(IMAGES, 4 * SIDE, 2, 4 * SIDE, 2, CLASSES).transpose(
      0, 1, 3, 2, 4, 5)
  reordered = jax.eval_shape(last_shuffle, jnp.zeros(natural)).shape
  sub_pixels = (IMAGES, SIDE * SIDE, 64, CLASSES)
  natural_logits = lambda params, z: decoder.apply(params, z)
  # name -> (the decoder's logits, the loss of one decoder's logits against the target,
  # the target's shape)
  variants = {
      'full resolution': (natural_logits, lambda logits, main: losses.consistency_loss(
          logits[None], main), natural),
      'space to depth': (natural_logits, lambda logits, main: losses.consistency_loss(
          last_shuffle(logits)[None], main), reordered),
      # The main prediction's log-probabilities computed once for all decoders, outside.
      'target once': (natural_logits, lambda logits, log_probs: losses.consistency_to_target(
          last_shuffle(logits)[None], (log_probs, None)), reordered),
      'sub-pixel logits': (
          lambda params, z: sub_pixel_logits(decoder, params['params'], z),
          lambda logits, log_probs: losses.consistency_to_target(logits[None],
                                                                 (log_probs, None)),
          sub_pixels),
  }
  results = {}
  for name, (logits_of, loss_of, target_shape) in variants.items():
    def loss(params, z, target):
      return loss_of(logits_of(params, z).astype(jnp.float32), target)
    compiled = jax.jit(jax.grad(jax.checkpoint(loss), argnums=(0, 1))).lower(
        params, z, spec(target_shape)).compile()
    cost = compile_report.cost_of(compiled)
    results[name] = compile_report.estimate(compiled.as_text(), cost, IMAGES, chip.clock_hz,
                                            chip.bf16_flops, chip.hbm_bandwidth, top=5)
    e = results[name]
    print(f"{name}: {e['cycles'] / 1e6:.1f} M cycles, {1e3 * e['step_s']:.2f} ms; FLOPs "
          f"bound {1e3 * float(cost['flops']) / chip.bf16_flops:.3f} ms, HBM bound "
          f"{1e3 * e['hbm_bound_s']:.2f} ms", flush=True)
    print('\n'.join(compile_report.top_lines(e)))
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, 'w') as f:
    json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()
