"""Speed of the train step and of inference, on this machine and beside the authors' code.

  .venv/bin/python benchmarks/speed.py                    # 2 + 2 images at 321x321
  .venv/bin/python benchmarks/speed.py --reference        # then the authors' PyTorch CCT
  .venv/bin/python benchmarks/speed.py --full             # 10 + 10 at 320 (the paper's)
  .venv/bin/python benchmarks/speed.py --models=small --devices=1,2,4 --dtypes=float32,bfloat16

Models: `full` is the VOC network (deep-stem dilated ResNet-50 at output stride 8, PSP, 21
classes, the 30 auxiliary decoders of the default roster); `small` is the tiny variant
(configs: models.tiny_model_config) with the same decoders. For each model, dtype and
CPU device count, one child process measures (so that device count, XLA flags and peak
memory are its own; the batch sizes are per device, so 4 devices step 8 + 8 images):
  - the semi-supervised train step, the supervised step and inference (whole image, 2 images
    or the labelled batch size): median wall seconds per call after warm-up, images/s;
  - compile time of the semi step, its FLOPs from XLA's cost analysis against the model's
    own (the convolutions and matmuls of the step's jaxpr, before XLA rewrites it), and the
    achieved FLOP/s, as a fraction of the machine's peak (a large matmul, timed in the same
    child);
  - the auxiliary decoders' share of the semi step: the step with all 30 decoders against
    the same step with one F-Noise decoder, (t30 - t1) / t30 x 30 / 29;
  - peak resident memory of the child.
`--reference` times the authors' code afterwards, one after the other and never at once,
through ../shared/refcheck/ref_bench.py (its README: a checkout of CCT at 65d4e5b in
$CCT_REF and torch 2.13 in a separate venv, --torch_python), and prints the ratio JAX /
PyTorch of the f32 full-model train step and inference at the default size.
Results: a table, and benchmarks/results/speed.json. Run nothing else meanwhile: a second
process on the same cores spoils both timings.
"""

import json
import os
import platform
import resource
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'benchmarks', 'results', 'speed.json')
REFCHECK = os.path.join(os.path.dirname(REPO), 'shared', 'refcheck', 'ref_bench.py')

_MODELS = flags.DEFINE_list('models', ['full', 'small'], 'Models to measure: full, small.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'The models\' dtypes.')
_DEVICES = flags.DEFINE_list('devices', ['1'], 'CPU device counts, e.g. 1,2,4.')
_FULL = flags.DEFINE_bool('full', False, '10 + 10 images at 320x320 (the paper\'s).')
_SIZE = flags.DEFINE_integer('size', 0, 'Image side instead (a quick check); 0: the default.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed calls before the timed ones.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls; their median is reported.')
_XLA_FLAGS = flags.DEFINE_string('xla_flags', '', 'Added to $XLA_FLAGS of every child.')
_PROFILE = flags.DEFINE_string(
    'profile', '', 'A folder: trace one semi step there; the JSON gets its top ops.')
_SEMI_ONLY = flags.DEFINE_bool(
    'semi_only', False, 'Only the semi-supervised step (to compare XLA flags quickly).')
_REFERENCE = flags.DEFINE_bool('reference', False, 'Then time the authors\' PyTorch CCT.')
_CCT_REF = flags.DEFINE_string('cct_ref', '', 'The authors\' code (default: $CCT_REF).')
_TORCH_PYTHON = flags.DEFINE_string('torch_python', '/tmp/torch-ref/bin/python',
                                    'The Python of a venv with torch, for --reference.')
_OUT = flags.DEFINE_string('out', RESULTS, 'JSON output.')
_CHILD = flags.DEFINE_string(
    'child', None, 'Internal: one measurement\'s JSON spec, measured in this process.')


def profile_one_step(run, directory: str, top: int = 20) -> dict:
  """Where one step's time goes: jax.profiler's trace of a call, the step's XLA ops summed
  by kind (the name without its number: `convolution`, `ynn_fusion`, `loop_fusion`, ...),
  in thread-seconds (2 threads can run ops at once), the largest first."""
  import glob
  import gzip
  import re

  import jax

  with jax.profiler.trace(directory, create_perfetto_trace=True):
    run()
  path = max(glob.glob(os.path.join(directory, '**', '*perfetto_trace.json.gz'), recursive=True),
             key=os.path.getmtime)
  with gzip.open(path) as f:
    events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  by_kind: dict[str, float] = {}
  for event in events:
    op = event.get('args', {}).get('hlo_op')
    if event.get('ph') == 'X' and op and event['args'].get('hlo_module') == 'jit_step_fn':
      kind = re.sub(r'\.\d+$', '', op)
      by_kind[kind] = by_kind.get(kind, 0.0) + event['dur'] / 1e6
  ranked = sorted(by_kind.items(), key=lambda item: -item[1])
  return {'trace': path, 'thread_seconds': sum(by_kind.values()),
          'top_op_kinds': [{'kind': k, 'thread_seconds': t} for k, t in ranked[:top]]}


def measure(spec: dict) -> dict:
  """One child's measurements (see the module docstring); runs in a fresh process."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  sys.path.insert(0, REPO)
  from cct_jax import defaults, methods, models, parallel, perturbations, train_step
  import timing

  config = defaults.base_config('voc')
  if spec['model'] == 'small':
    config.model = models.tiny_model_config(config.data.num_classes)
  config.model.dtype = spec['dtype']
  mesh = parallel.data_mesh()
  rep, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  # Per device (weak scaling): every device count gets whole examples of the same size.
  batch, size = spec['batch'] * spec['devices'], spec['size']
  labelled, unlabelled = timing.random_batches(np.random.default_rng(0), mesh, batch, size,
                                                config.model.num_classes)
  result = {}

  def time_step(mode: str, counts: dict | None = None):
    config.train.mode = mode
    if counts is not None:
      perturbations.set_counts(config.perturbations, counts)
    model, method = methods.build(config)
    state = train_step.create_train_state(config, model, method, 1000, mesh)
    step_fn = train_step.make_train_step(config, model, method, 1000)
    step = jax.jit(step_fn, in_shardings=(rep, sharded, sharded), out_shardings=(rep, rep),
                   donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, labelled, unlabelled).compile()
    compile_s = time.perf_counter() - start
    holder = [state]

    def run():
      holder[0], metrics = compiled(holder[0], labelled, unlabelled)
      jax.block_until_ready(metrics)

    seconds = timing.median_seconds(run, spec['warmup'], spec['repeats'])
    flops = float((compiled.cost_analysis() or {}).get('flops', 0.0))
    if mode == 'semi' and counts is None:
      result['model_flops'] = timing.jaxpr_flops(
          jax.make_jaxpr(step_fn)(holder[0], labelled, unlabelled).jaxpr)
      if spec['profile']:
        result['profile'] = profile_one_step(run, spec['profile'])
    return model, holder[0], seconds, compile_s, flops

  full_roster = perturbations.decoder_counts(config.perturbations)
  model, state, semi_s, compile_s, flops = time_step('semi')
  result.update(semi_step_s=semi_s, semi_compile_s=compile_s, semi_flops=flops,
                semi_images_per_s=2 * batch / semi_s)
  if not spec['semi_only']:
    num_aux = sum(full_roster.values())
    _, _, one_s, _, _ = time_step('semi', {name: int(name == 'feature_noise')
                                            for name in full_roster})
    result.update(one_decoder_step_s=one_s,
                  aux_share=(semi_s - one_s) / semi_s * num_aux / (num_aux - 1))
    perturbations.set_counts(config.perturbations, full_roster)
    _, _, sup_s, _, _ = time_step('supervised')
    result.update(supervised_step_s=sup_s, supervised_images_per_s=batch / sup_s)

    predict = jax.jit(train_step.make_predict_fn(config, model, methods.get(config)))
    images = labelled['image']
    infer_s = timing.median_seconds(lambda: jax.block_until_ready(predict(state, images)),
                                    spec['warmup'], spec['repeats'])
    result.update(inference_s=infer_s, inference_images_per_s=batch / infer_s)

  # The machine's peak for this dtype: a large matmul on one device, all threads busy.
  dtype = jnp.dtype(spec['dtype'])
  n = 4096
  a = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda x: x @ x)
  peak = 2 * n**3 / timing.median_seconds(lambda: matmul(a).block_until_ready(), 1, 3)
  result.update(achieved_flops_per_s=flops / semi_s, peak_flops_per_s=peak,
                fraction_of_peak=flops / semi_s / peak,
                peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
  return result


def run_child(spec: dict, xla_flags: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES=str(spec['devices']))
  if xla_flags:
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' + xla_flags).strip()
  out = subprocess.run([sys.executable, __file__, '--child', json.dumps(spec)], env=env,
                       capture_output=True, text=True, check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith('{')]
  if out.returncode != 0 or not lines:
    raise RuntimeError(f'speed child {spec} failed:\n{out.stderr[-3000:]}')
  return json.loads(lines[-1])


def reference(cct_ref: str, torch_python: str, size: int, repeats: int) -> dict:
  """The authors' code through ../shared/refcheck (train 2 + 2 and inference of 2 images)."""
  cct_ref = cct_ref or os.environ.get('CCT_REF', '')
  if not (cct_ref and os.path.isdir(cct_ref) and os.path.isfile(torch_python)):
    sys.exit('--reference needs the authors\' code in --cct_ref (or $CCT_REF) and a torch '
             f'venv\'s python in --torch_python (now {torch_python!r}); '
             f'see {os.path.dirname(REFCHECK)}/README.md')
  out = subprocess.run([torch_python, REFCHECK, '--phases', 'infer,train', '--size',
                        str(size), '--reps', str(repeats)],
                       env=dict(os.environ, CCT_REF=cct_ref), capture_output=True, text=True,
                       check=False)
  if out.returncode != 0:
    raise RuntimeError(f'ref_bench failed:\n{out.stderr[-3000:]}')
  result = json.loads(out.stdout)
  for phase in ('infer', 'train'):
    if 'error' in result[phase]:
      raise RuntimeError(f'ref_bench {phase}: {result[phase]}')
  return {'train_step_s': result['train']['median_s'], 'inference_s': result['infer']['median_s'],
          'peak_rss_gb': result['train'].get('peak_rss_mb', 0) / 1024, 'raw': result}


COLUMNS = (('model', '{}'), ('dtype', '{}'), ('devices', '{}'), ('semi_step_s', '{:.2f}'),
           ('semi_images_per_s', '{:.2f}'), ('supervised_step_s', '{:.2f}'),
           ('inference_s', '{:.2f}'), ('semi_compile_s', '{:.0f}'), ('aux_share', '{:.0%}'),
           ('semi_flops', '{:.3g}'), ('model_flops', '{:.3g}'),
           ('achieved_flops_per_s', '{:.3g}'), ('fraction_of_peak', '{:.0%}'),
           ('peak_rss_gb', '{:.2f}'))


def table(rows: list[dict]) -> str:
  head = '| ' + ' | '.join(name for name, _ in COLUMNS) + ' |'
  lines = [head, '|' + '---|' * len(COLUMNS)]
  for row in rows:
    lines.append('| ' + ' | '.join(fmt.format(row[name]) if name in row else '-'
                                   for name, fmt in COLUMNS) + ' |')
  return '\n'.join(lines)


def main(argv):
  del argv
  if _CHILD.value:
    print(json.dumps(measure(json.loads(_CHILD.value))))
    return
  batch, default_size = (10, 320) if _FULL.value else (2, 321)
  size = _SIZE.value or default_size
  rows = []
  for model in _MODELS.value:
    for dtype in _DTYPES.value:
      for devices in map(int, _DEVICES.value):
        spec = dict(model=model, dtype=dtype, devices=devices, batch=batch, size=size,
                    warmup=_WARMUP.value, repeats=_REPEATS.value, semi_only=_SEMI_ONLY.value,
                    profile=_PROFILE.value and os.path.abspath(_PROFILE.value))
        print(f'measuring {spec} ...', file=sys.stderr, flush=True)
        rows.append(dict(spec, **run_child(spec, _XLA_FLAGS.value)))
        print(table(rows[-1:]), file=sys.stderr, flush=True)
  output = dict(command=' '.join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
                machine=dict(platform=platform.platform(), processor=platform.processor(),
                             cpu_count=os.cpu_count()),
                xla_flags=_XLA_FLAGS.value, rows=rows)
  print(table(rows))
  if _REFERENCE.value:
    ref = reference(_CCT_REF.value, _TORCH_PYTHON.value, size, _REPEATS.value)
    output['reference'] = ref
    ours = next((r for r in rows if (r['model'], r['dtype'], r['devices']) ==
                 ('full', 'float32', 1)), None)
    if ours is not None and 'inference_s' in ours and (batch, size) == (2, 321):
      output['ratio_jax_over_pytorch'] = {
          'train_step': ours['semi_step_s'] / ref['train_step_s'],
          'inference': ours['inference_s'] / ref['inference_s']}
      print(f"\nauthors' PyTorch code: train step {ref['train_step_s']:.2f} s, inference "
            f"{ref['inference_s']:.2f} s; JAX / PyTorch: train step "
            f"{output['ratio_jax_over_pytorch']['train_step']:.2f}, inference "
            f"{output['ratio_jax_over_pytorch']['inference']:.2f}")
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(output, f, indent=1)
  print(f'written to {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
