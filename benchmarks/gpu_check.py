"""The paper's train step and evaluation on a GPU, beside the authors' PyTorch step, in one
call (README, "On a GPU"). Run through benchmarks/gpu_check.sh:

  bash benchmarks/gpu_check.sh            # on the GPU machine: JSON to $OUT/gpu_check.json
  bash benchmarks/gpu_check.sh --smoke    # on a CPU: the tiny model at 64 x 64, same path

Each dtype is measured in a child process of its own (so that its peak memory is its own),
one after the other:
  - the train step: the VOC network (configs/voc.py: dilated ResNet-50, PSP, 21 classes, the
    30 auxiliary decoders), 10 labelled + 10 unlabelled 320 x 320 crops, CCT's step jitted
    as training jits it (train_step.jit_train_step): compile seconds, median step seconds,
    images/s (labelled + unlabelled), the device's peak memory, the model's FLOPs per step
    (its convolutions and matmuls as written, benchmarks/timing.py) and the MFU: those FLOPs
    per second over the card's dense bf16 peak (GPU_PEAKS, from the vendor's datasheet);
  - evaluation as `--mode=eval` runs it on VOC val: VOC-sized images (500 x 375 and its
    kin) padded to the 504-pixel canvas that holds nearly all of VOC val
    (data/eval_batches.py), through the evaluation step, at 1 image per device (the VOC
    config's `data.eval_batch_size`) and at 8: images/s.
Then the authors' PyTorch CCT (github.com/yassouali/CCT) at the same batch and size, through
refcheck's ref_bench.py with `--device cuda`, when --cct_ref (or $CCT_REF) holds their code.
Prints a table and writes JSON naming the device, with the issue's goals: bf16 images/s at
least 3x PyTorch's, and an MFU of at least 40% in the step.
"""

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

# pylint: disable=wrong-import-position
import timing
from cct_jax import defaults, evaluate, methods, models, parallel, perturbations, train_step
from cct_jax.labels import IGNORE_INDEX
from cct_jax.models import pretrained
# pylint: enable=wrong-import-position

# Dense bf16 matrix peak per device kind (the sparse figure halved), FLOP/s, with the source.
GPU_PEAKS = {
    'H200': (989e12, 'nvidia.com/en-us/data-center/h200 (1,979 TFLOPS with sparsity)'),
    'H100': (989e12, 'nvidia.com/en-us/data-center/h100 (SXM, 1,979 TFLOPS with sparsity)'),
    'A100': (312e12, 'nvidia.com/en-us/data-center/a100 (624 TFLOPS with sparsity)'),
}
GOALS = {'bf16_speedup_over_pytorch': 3.0, 'mfu': 0.40}
# (height, width) of VOC val's commonest shapes: a 500-pixel longer side in landscape or
# portrait, drawn in turn for the evaluation batches.
VOC_SIZES = ((375, 500), (500, 375), (333, 500), (500, 333), (366, 500), (500, 500))
PAPER = dict(batch=10, size=320, canvas=504, eval_per_device=(1, 8), warmup=3, repeats=10)
SMOKE = dict(batch=1, size=64, canvas=64, eval_per_device=(1, 2), warmup=1, repeats=2)

# benchmarks/gpu_check.sh's help lists these options, but for --out (it sets it) and --child.
_SMOKE = flags.DEFINE_bool(
    'smoke', False, 'The tiny model with one decoder at 64 x 64 (CPU; the tests).')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], "The train step's dtypes.")
_OUT = flags.DEFINE_string(
    'out', os.path.join(REPO, 'benchmarks', 'results', 'gpu_check.json'), 'JSON output.')
_CCT_REF = flags.DEFINE_string(
    'cct_ref', os.environ.get('CCT_REF', ''), "The authors' code (default: $CCT_REF).")
_REFCHECK = flags.DEFINE_string(
    'refcheck', os.path.join(REPO, 'refcode', 'refcheck', 'ref_bench.py'),
    "Their step's runner, refcheck's ref_bench.py.")
# Within the 6 minutes of one call: a part that runs out is reported, the rest kept.
_CHILD_TIMEOUT_S = flags.DEFINE_float(
    'child_timeout_s', 140, "Seconds each dtype's child process may take.")
_REFERENCE_TIMEOUT_S = flags.DEFINE_float(
    'reference_timeout_s', 60, 'Seconds the PyTorch step may take.')
_CHILD = flags.DEFINE_string(
    'child', None, "Internal (run_child): one dtype's JSON spec, measured in this process.")


def peak_of(device) -> tuple[float | None, str]:
  for name, (peak, source) in GPU_PEAKS.items():
    if name in device.device_kind:
      return peak, source
  return None, f'no datasheet peak for {device.device_kind!r}'


def eval_batch(rng, num_images: int, canvas: int, num_classes: int, sizes) -> dict:
  """Images of the given sizes padded to a `canvas` square, as data/eval_batches.py pads
  them: the padding is IGNORE_INDEX in the mask and each row carries its own size."""
  image = rng.normal(size=(num_images, canvas, canvas, 3)).astype(np.float32)
  mask = rng.integers(0, num_classes, (num_images, canvas, canvas)).astype(np.int32)
  own = [sizes[i % len(sizes)] for i in range(num_images)]
  for row, (h, w) in enumerate(own):
    image[row, h:], image[row, :, w:] = 0, 0
    mask[row, h:], mask[row, :, w:] = IGNORE_INDEX, IGNORE_INDEX
  return {'image': image, 'mask': mask, 'valid': np.ones(num_images, bool),
          'size': np.asarray(own, np.int32)}


def measure(spec: dict) -> dict:
  """One dtype's train step and evaluation (see the module docstring), in this process."""
  config = defaults.base_config('voc')
  config.model.pretrained = pretrained.FROM_SCRATCH  # the weights do not change the speed
  if spec['smoke']:
    config.model = models.tiny_model_config(config.data.num_classes)
    perturbations.set_counts(config.perturbations, {
        name: int(name == 'feature_noise')
        for name in perturbations.decoder_counts(config.perturbations)})
  config.model.dtype = spec['dtype']
  mesh = parallel.data_mesh()
  device = jax.local_devices()[0]
  batch, size = spec['batch'] * jax.device_count(), spec['size']
  rng = np.random.default_rng(0)
  labelled, unlabelled = timing.random_batches(rng, mesh, batch, size, config.model.num_classes)

  model, method = methods.build(config)
  num_steps = 1000
  state = train_step.create_train_state(config, model, method, num_steps, mesh)
  step_fn = train_step.make_train_step(config, model, method, num_steps)
  model_flops = timing.jaxpr_flops(jax.make_jaxpr(step_fn)(state, labelled, unlabelled).jaxpr)
  start = time.perf_counter()
  compiled = train_step.jit_train_step(step_fn, mesh, uses_unlabelled=True).lower(
      state, labelled, unlabelled).compile()
  compile_s = time.perf_counter() - start
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], labelled, unlabelled)
    jax.block_until_ready(metrics)

  step_s = timing.median_seconds(run, spec['warmup'], spec['repeats'])
  memory = compiled.memory_analysis()
  peak, peak_source = peak_of(device)
  result = dict(
      device_kind=device.device_kind, platform=device.platform, devices=jax.device_count(),
      jax_version=jax.__version__, dtype=spec['dtype'],
      matmul_precision=str(jax.config.jax_default_matmul_precision),
      batch=f'{batch} + {batch}', size=size, num_aux_decoders=sum(
          methods.aux_counts(config).values()),
      compile_s=compile_s, step_s=step_s, images_per_s=2 * batch / step_s,
      model_flops=model_flops, xla_flops=float((compiled.cost_analysis() or {}).get('flops', 0)),
      xla_bytes=(memory.argument_size_in_bytes + memory.output_size_in_bytes
                 + memory.temp_size_in_bytes) if memory is not None else None,
      bf16_peak_flops=peak, bf16_peak_source=peak_source,
      mfu=model_flops / step_s / peak if peak else None)

  predict = train_step.make_predict_fn(config, model, method)
  eval_step = evaluate.make_eval_step(predict, config.model.num_classes, mesh)
  canvas = spec['canvas']
  sizes = [(min(h, canvas), min(w, canvas)) for h, w in VOC_SIZES]
  for per_device in spec['eval_per_device']:
    num_images = per_device * jax.device_count()
    host = eval_batch(rng, num_images, canvas, config.model.num_classes, sizes)
    eval_inputs = parallel.global_batch(mesh, host)
    confusion = jax.device_put(jnp.zeros((config.model.num_classes,) * 2, jnp.int32),
                               parallel.replicated(mesh))

    def score():
      nonlocal confusion
      confusion, predictions = eval_step(holder[0], confusion, eval_inputs)
      jax.block_until_ready(predictions)

    start = time.perf_counter()
    score()
    eval_compile_s = time.perf_counter() - start
    eval_s = timing.median_seconds(score, spec['warmup'], spec['repeats'])
    result[f'eval_{per_device}_per_device'] = dict(
        canvas=canvas, images=num_images, compile_s=eval_compile_s, batch_s=eval_s,
        images_per_s=num_images / eval_s)
  stats = device.memory_stats() or {}
  result['peak_device_bytes'] = stats.get('peak_bytes_in_use')
  return result


def run_child(spec: dict, timeout_s: float) -> dict:
  try:
    out = subprocess.run([sys.executable, __file__, '--child', json.dumps(spec)],
                         capture_output=True, text=True, check=False, timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return {'dtype': spec['dtype'], 'error': f'did not finish in {timeout_s:.0f} s'}
  lines = [line for line in out.stdout.splitlines() if line.startswith('{')]
  if out.returncode != 0 or not lines:
    return {'dtype': spec['dtype'], 'error': f'exit {out.returncode}: {out.stderr[-2000:]}'}
  return json.loads(lines[-1])


def reference(refcheck: str, cct_ref: str, batch: int, size: int, repeats: int,
              timeout_s: float) -> dict:
  """The authors' step and a `batch`-image forward on the GPU (ref_bench.py --device cuda)."""
  if not (cct_ref and os.path.isdir(cct_ref) and os.path.isfile(refcheck)):
    return {'skipped': f'the authors\' code (--cct_ref {cct_ref!r}) or ref_bench.py '
                       f'({refcheck!r}) is missing; README "On a GPU" says how to carry them'}
  command = [sys.executable, refcheck, '--device', 'cuda', '--phases', 'info,infer,train',
             '--batch', str(batch), '--size', str(size), '--reps', str(repeats),
             '--wait-quiet', '0']
  try:
    out = subprocess.run(command, env=dict(os.environ, CCT_REF=cct_ref), capture_output=True,
                         text=True, check=False, timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return {'error': f'did not finish in {timeout_s:.0f} s'}
  if out.returncode != 0:
    return {'error': f'exit {out.returncode}: {out.stderr[-2000:]}'}
  raw = json.loads(out.stdout)
  train = raw.get('train', {})
  if 'median_s' not in train:
    return {'error': 'no train timing', 'raw': raw}
  return {'device_name': train.get('device_name'), 'step_s': train['median_s'],
          'images_per_s': 2 * batch / train['median_s'],
          'peak_gpu_mb': train.get('peak_gpu_mb'), 'raw': raw}


def table(rows: list[dict], ref: dict) -> str:
  lines = ['| run | dtype | step s | images/s | compile s | peak memory GB | MFU | '
           'eval images/s (images per device: images/s) |', '|' + '---|' * 8]
  for row in rows:
    if 'error' in row:
      lines.append(f"| cct-jax | {row['dtype']} | failed: {row['error'][:120]} |")
      continue
    memory = row['peak_device_bytes'] or row['xla_bytes']
    evals = ', '.join(f"{k.split('_')[1]}: {v['images_per_s']:.1f}" for k, v in row.items()
                      if k.startswith('eval_'))
    mfu = f"{row['mfu']:.1%}" if row['mfu'] is not None else '-'
    lines.append(f"| cct-jax | {row['dtype']} | {row['step_s']:.3f} | "
                 f"{row['images_per_s']:.1f} | {row['compile_s']:.0f} | {memory / 1e9:.2f} | "
                 f"{mfu} | {evals} |")
  if 'step_s' in ref:
    lines.append(f"| authors' PyTorch | float32 | {ref['step_s']:.3f} | "
                 f"{ref['images_per_s']:.1f} | | {(ref['peak_gpu_mb'] or 0) / 1e3:.2f} | | |")
  return '\n'.join(lines)


def main(argv):
  del argv
  if _CHILD.value:
    print(json.dumps(measure(json.loads(_CHILD.value))))
    return
  setting = SMOKE if _SMOKE.value else PAPER
  rows = []
  for dtype in _DTYPES.value:
    spec = dict(setting, dtype=dtype, smoke=_SMOKE.value)
    print(f'measuring the {dtype} step ...', file=sys.stderr, flush=True)
    rows.append(run_child(spec, _CHILD_TIMEOUT_S.value))
  ref = ({'skipped': 'not in a smoke run'} if _SMOKE.value else
         reference(_REFCHECK.value, _CCT_REF.value, setting['batch'], setting['size'],
                   setting['repeats'], _REFERENCE_TIMEOUT_S.value))
  output = dict(command=' '.join(['benchmarks/gpu_check.py'] + sys.argv[1:]),
                setting=setting, goals=GOALS, rows=rows, reference=ref)
  bf16 = next((r for r in rows if r.get('dtype') == 'bfloat16' and 'error' not in r), None)
  if bf16 is not None:
    output['device'] = bf16['device_kind']
    output['mfu_bf16'] = bf16['mfu']
    if 'images_per_s' in ref:
      output['bf16_speedup_over_pytorch'] = bf16['images_per_s'] / ref['images_per_s']
  print(table(rows, ref))
  for goal in GOALS:
    if output.get(goal) is not None:
      print(f'{goal}: {output[goal]:.2f} (goal {GOALS[goal]})')
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(output, f, indent=1)
  print(f'written to {_OUT.value}')
  if any('error' in row for row in rows):
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
