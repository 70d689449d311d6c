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
Results: a table, and benchmarks/results/speed.json. Run nothing else meanwhile: on two
cores a second process spoils both timings.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'benchmarks', 'results', 'speed.json')
REFCHECK = os.path.join(os.path.dirname(REPO), 'shared', 'refcheck', 'ref_bench.py')


def median_seconds(fn, warmup: int, repeats: int) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def jaxpr_flops(jaxpr) -> float:
  """The multiply-adds (x2) of every convolution and matmul in a jaxpr, sub-jaxprs
  included: the model's own FLOPs as written, before XLA's rewrites."""
  import math

  import jax.extend as jex

  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape
      rhs_spec = eqn.params['dimension_numbers'].rhs_spec
      taps = math.prod(rhs[d] for d in rhs_spec[2:]) * rhs[rhs_spec[1]]
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * taps
    elif name == 'dot_general':
      (contracting, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        if isinstance(sub, (jex.core.Jaxpr, jex.core.ClosedJaxpr)):
          total += jaxpr_flops(getattr(sub, 'jaxpr', sub))
  return total


def random_batches(rng, mesh, batch: int, size: int, num_classes: int) -> tuple[dict, dict]:
  """A labelled and an unlabelled batch of `batch` random `size` x `size` images (labels too),
  sharded over `mesh`: random, not zeros, which can run faster than real data."""
  import jax
  import numpy as np

  from cct_jax import parallel

  sharded = parallel.batch_sharded(mesh)
  labelled = jax.device_put({
      'image': rng.normal(size=(batch, size, size, 3)).astype(np.float32),
      'mask': rng.integers(0, num_classes, (batch, size, size)).astype(np.int32)}, sharded)
  unlabelled = jax.device_put(
      {'image': rng.normal(size=(batch, size, size, 3)).astype(np.float32)}, sharded)
  return labelled, unlabelled


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

  config = defaults.base_config('voc')
  if spec['model'] == 'small':
    config.model = models.tiny_model_config(config.data.num_classes)
  config.model.dtype = spec['dtype']
  mesh = parallel.data_mesh()
  rep, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  # Per device (weak scaling): every device count gets whole examples of the same size.
  batch, size = spec['batch'] * spec['devices'], spec['size']
  labelled, unlabelled = random_batches(np.random.default_rng(0), mesh, batch, size,
                                         config.model.num_classes)
  result = {}

  def time_step(mode: str, counts: dict | None = None):
    config.train.mode = mode
    if counts is not None:
      perturbations.set_counts(config.perturbations, counts)
    model, _ = methods.build(config)
    state = train_step.create_train_state(config, model, 1000, mesh)
    step_fn = train_step.make_train_step(config, model, 1000)
    step = jax.jit(step_fn, in_shardings=(rep, sharded, sharded), out_shardings=(rep, rep),
                   donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, labelled, unlabelled).compile()
    compile_s = time.perf_counter() - start
    holder = [state]

    def run():
      holder[0], metrics = compiled(holder[0], labelled, unlabelled)
      jax.block_until_ready(metrics)

    seconds = median_seconds(run, spec['warmup'], spec['repeats'])
    flops = float((compiled.cost_analysis() or {}).get('flops', 0.0))
    if mode == 'semi' and counts is None:
      result['model_flops'] = jaxpr_flops(
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

    predict = jax.jit(train_step.make_predict_fn(config, model))
    images = labelled['image']
    infer_s = median_seconds(lambda: jax.block_until_ready(predict(state, images)),
                             spec['warmup'], spec['repeats'])
    result.update(inference_s=infer_s, inference_images_per_s=batch / infer_s)

  # The machine's peak for this dtype: a large matmul on one device, all threads busy.
  dtype = jnp.dtype(spec['dtype'])
  n = 4096
  a = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda x: x @ x)
  peak = 2 * n**3 / median_seconds(lambda: matmul(a).block_until_ready(), 1, 3)
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


def reference(args) -> dict:
  """The authors' code through ../shared/refcheck (train 2 + 2 and inference of 2 images)."""
  cct_ref = args.cct_ref or os.environ.get('CCT_REF', '')
  if not (cct_ref and os.path.isdir(cct_ref) and os.path.isfile(args.torch_python)):
    sys.exit('--reference needs the authors\' code in --cct_ref (or $CCT_REF) and a torch '
             f'venv\'s python in --torch_python (now {args.torch_python!r}); '
             f'see {os.path.dirname(REFCHECK)}/README.md')
  out = subprocess.run([args.torch_python, REFCHECK, '--phases', 'infer,train', '--size',
                        str(args.size), '--reps', str(args.repeats)],
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--models', default='full,small')
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--devices', default='1', help='CPU device counts, e.g. 1,2,4')
  parser.add_argument('--full', action='store_true', help='10 + 10 images at 320x320')
  parser.add_argument('--size', type=int, default=0, help='image side instead (a quick check)')
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--xla_flags', default='', help='added to $XLA_FLAGS of every child')
  parser.add_argument('--profile', default='',
                      help='a folder: trace one semi step there; the JSON gets its top ops')
  parser.add_argument('--semi_only', action='store_true',
                      help='only the semi-supervised step (to compare XLA flags quickly)')
  parser.add_argument('--reference', action='store_true')
  parser.add_argument('--cct_ref', default='', help='the authors\' code (default: $CCT_REF)')
  parser.add_argument('--torch_python', default='/tmp/torch-ref/bin/python')
  parser.add_argument('--out', default=RESULTS)
  parser.add_argument('--child', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure(json.loads(args.child))))
    return
  args.batch, default_size = (10, 320) if args.full else (2, 321)
  args.size = args.size or default_size
  rows = []
  for model in args.models.split(','):
    for dtype in args.dtypes.split(','):
      for devices in map(int, args.devices.split(',')):
        spec = dict(model=model, dtype=dtype, devices=devices, batch=args.batch,
                    size=args.size, warmup=args.warmup, repeats=args.repeats,
                    semi_only=args.semi_only,
                    profile=args.profile and os.path.abspath(args.profile))
        print(f'measuring {spec} ...', file=sys.stderr, flush=True)
        rows.append(dict(spec, **run_child(spec, args.xla_flags)))
        print(table(rows[-1:]), file=sys.stderr, flush=True)
  output = dict(command=' '.join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
                machine=dict(platform=platform.platform(), processor=platform.processor(),
                             cpu_count=os.cpu_count()),
                xla_flags=args.xla_flags, rows=rows)
  print(table(rows))
  if args.reference:
    ref = reference(args)
    output['reference'] = ref
    ours = next((r for r in rows if (r['model'], r['dtype'], r['devices']) ==
                 ('full', 'float32', 1)), None)
    if ours is not None and 'inference_s' in ours and (args.batch, args.size) == (2, 321):
      output['ratio_jax_over_pytorch'] = {
          'train_step': ours['semi_step_s'] / ref['train_step_s'],
          'inference': ours['inference_s'] / ref['inference_s']}
      print(f"\nauthors' PyTorch code: train step {ref['train_step_s']:.2f} s, inference "
            f"{ref['inference_s']:.2f} s; JAX / PyTorch: train step "
            f"{output['ratio_jax_over_pytorch']['train_step']:.2f}, inference "
            f"{output['ratio_jax_over_pytorch']['inference']:.2f}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(output, f, indent=1)
  print(f'written to {args.out}')


if __name__ == '__main__':
  main()
