"""`--mode=compile`: the configured train and evaluation steps compiled for a TPU slice
that is not here, to see whether a run fits and how fast it can be before paying for it.

libtpu compiles for a named topology on any machine (`jax.experimental.topologies`): the
steps are lowered with the config's global batches sharded over the slice's chips, as a
real run shards them (parallel.py), and XLA's memory and cost analyses of the compiled
programs give, per device: the bytes of the arguments, outputs and temporaries against
its HBM, the FLOPs of one step, and so a lower bound on the step's time at the chip's
bf16 peak. A step that does not fit is reported with XLA's numbers, not raised.

How fast: the compiled TPU program carries the compiler's own performance model, an
estimated cycle count per instruction; their sum over the step (loop bodies once per trip)
at the chip's clock is XLA's estimate of the step time, with its costliest instructions
and the model code they come from. A model, not a measurement: no TPU is here to run it.
"""

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import re
import time

import jax
import numpy as np
from jax.experimental import topologies

from cct_jax import (checkpointing, errors, evaluate, methods, models, parallel, perturbations,
                     train_step)
from cct_jax import state as state_lib
from cct_jax.data import factory as data_factory

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  hbm_bytes: int  # per chip
  bf16_flops: float  # peak per chip, per second
  hbm_bandwidth: float  # bytes per second, per chip
  source: str  # the page of the three figures above
  clock_hz: float  # converts XLA's estimated cycles to seconds
  clock_source: str


# The topology name's prefix (e.g. 'v5e' of 'v5e:2x4') -> the chip's published figures.
# No page gives a clock: it is the bf16 peak over the MXUs' multiply-adds per cycle
# (2 FLOP each), with the MXUs the pages name. On a 4096^3 bf16 matmul libtpu's cycle
# estimate at these clocks is within 4% (v5e, v5p) and 8% (v4) of the FLOPs at peak.
CHIPS = {
    'v4': Chip(32 * GIB, 275e12, 1200e9, 'https://cloud.google.com/tpu/docs/v4', 1.05e9,
               '275 TFLOP/s over 2 TensorCores x 4 MXUs x 128 x 128 x 2 FLOP'),
    'v5e': Chip(16 * GIB, 197e12, 819e9, 'https://cloud.google.com/tpu/docs/v5e', 1.5e9,
                '197 TFLOP/s over 4 MXUs x 128 x 128 x 2 FLOP'),
    'v5p': Chip(95 * GIB, 459e12, 2765e9, 'https://cloud.google.com/tpu/docs/v5p', 1.75e9,
                '459 TFLOP/s over 2 TensorCores x 4 MXUs x 128 x 128 x 2 FLOP'),
    # The page's two 256x256 MXUs would mean 3.5 GHz, at which libtpu's own cycle count
    # for a large matmul beats the peak; 4 MXUs' worth is the assumption that does not.
    'v6e': Chip(32 * GIB, 918e12, 1638e9, 'https://cloud.google.com/tpu/docs/v6e', 1.75e9,
                'assumed: 918 TFLOP/s over 4 x 256 x 256 x 2 FLOP (no clock published)'),
}


# For libtpu's description of this machine, which it reads from the Cloud TPU metadata
# server or, skipping that (as here), from the environment: one host of the topology's chip
# kind. Left unset, libtpu prints errors ("unexpected worker hostname") before the report.
# The devices compiled for are the named topology's whatever these say (checked for every
# kind here: the same devices, coordinates and hosts).
ONE_HOST = {'v4': 'v4-8', 'v5e': 'v5litepod-4', 'v5p': 'v5p-8', 'v6e': 'v6e-4'}


def chip_of(topology: str) -> Chip:
  kind = topology.split(':')[0]
  if kind not in CHIPS:
    raise errors.UserError(f'compile.topology={topology!r}: the chip kind must be one of '
                           f'{tuple(CHIPS)} (e.g. v5e:2x4)')
  return CHIPS[kind]


class LibtpuMissing(errors.UserError, RuntimeError):
  """libtpu, which compiles for TPUs, is not installed."""


def libtpu_requirement() -> str | None:
  """The libtpu release the installed jax pairs with, as its `tpu` extra names it (e.g.
  'libtpu==0.0.53.*'), or None where its metadata names none."""
  for requirement in importlib.metadata.requires('jax') or ():
    spec, _, marker = requirement.partition(';')
    if (re.match(r'libtpu(?![\w.-])', spec.strip())
        and re.search(r'extra\s*==\s*[\'"]tpu[\'"]', marker)):
      return spec.replace(' ', '')
  return None


def topology_devices(topology: str) -> list:
  library = os.environ.get('TPU_LIBRARY_PATH')
  if not (library and os.path.isfile(library)) and not importlib.util.find_spec('libtpu'):
    pairing = libtpu_requirement()
    install = f"`pip install '{pairing}'`, " if pairing else ''
    raise LibtpuMissing(
        f'--mode=compile needs libtpu: {install}the release that pairs with jax '
        f'{jax.__version__}, or TPU_LIBRARY_PATH=path/to/libtpu.so (`make test` installs one '
        'in .venv/libtpu)')
  # Without it libtpu asks the GCE metadata server, which is not there off Cloud TPU.
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  describe_one_host(topology.split(':')[0])
  # libtpu takes a lock that keeps a second process off the chips; compiling uses none.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  return topologies.get_topology_desc(platform='tpu', topology_name=topology).devices


def describe_one_host(kind: str) -> None:
  """Tells libtpu, before it starts, that this machine is a single host (see ONE_HOST);
  what the user set already stays."""
  if kind in ONE_HOST:
    os.environ.setdefault('TPU_ACCELERATOR_TYPE', ONE_HOST[kind])
  os.environ.setdefault('TPU_WORKER_ID', '0')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')


def devices_per_chip(devices) -> int:
  """Devices that share a chip's coordinates (v4 shows its two TensorCores apiece)."""
  return len(devices) // len({tuple(d.coords) for d in devices})


def batch_spec(shapes: dict, mesh) -> dict:
  """{key: (shape, dtype)} -> arguments sharded along 'data'."""
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=parallel.batch_sharded(mesh))
          for k, (shape, dtype) in shapes.items()}


def memory_bytes(compiled) -> dict[str, int]:
  """Per device: what the step's arguments, outputs (less those that reuse a donated
  argument's buffer) and temporaries hold at once."""
  analysis = compiled.memory_analysis()
  held = {'arguments': analysis.argument_size_in_bytes,
          'outputs': analysis.output_size_in_bytes - analysis.alias_size_in_bytes,
          'temporaries': analysis.temp_size_in_bytes,
          'code': analysis.generated_code_size_in_bytes}
  held['total'] = sum(held.values())
  return held


def cost_of(compiled) -> dict:
  cost = compiled.cost_analysis()
  return cost[0] if isinstance(cost, (list, tuple)) else cost


def per_device(chip: Chip, devices_on_chip: int) -> Chip:
  """A device's share of `chip` (v4's TensorCores split it; the clock is the chip's)."""
  return dataclasses.replace(chip, hbm_bytes=chip.hbm_bytes // devices_on_chip,
                             bf16_flops=chip.bf16_flops / devices_on_chip,
                             hbm_bandwidth=chip.hbm_bandwidth / devices_on_chip)


# XLA:TPU's compiled HLO text: each scheduled instruction's backend config carries the
# compiler's cost model's "estimated_cycles"; while loops carry their trip count only
# sometimes ("known_trip_count"), so it is also read from the loop's condition.
_INSTRUCTION = re.compile(r'\s*(?:ROOT )?%?([\w.-]+) = .*? ([a-z][\w-]*)\(')
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_KNOWN_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLEES = re.compile(r'\b(condition|body|to_apply|branch_computations|true_computation|'
                      r'false_computation)=\{?(%[\w.-]+(?:, %[\w.-]+)*)')
_COUNTER_BOUND = re.compile(r'compare\(%[\w.-]+, %([\w.-]+)\), direction=LT')
_CONSTANT = re.compile(r'constant\((\d+)\)')


def hlo_computations(text: str) -> tuple[dict[str, list[str]], str]:
  """HLO module text -> ({computation: its instruction lines}, the entry's name)."""
  computations, entry, lines = {}, None, None
  for line in text.splitlines():
    if line.endswith('{') and line[:1] not in ('', ' '):
      is_entry = line.startswith('ENTRY ')
      name = line.split()[1 if is_entry else 0].lstrip('%')
      entry = name if is_entry else entry
      lines = computations[name] = []
    elif lines is not None and line.startswith(' '):
      lines.append(line)
  return computations, entry


def trip_count(while_line: str, computations: dict[str, list[str]]) -> int:
  """A while loop's trips: the compiler's count, else the bound its condition compares the
  counter against (jax's loops count from 0 by 1)."""
  known = _KNOWN_TRIPS.search(while_line)
  if known:
    return int(known.group(1))
  condition = computations[dict(_CALLEES.findall(while_line))['condition'].lstrip('%')]
  named = {match.group(1): line for line in condition
           if (match := _INSTRUCTION.match(line))}
  for line in condition:
    bound = _COUNTER_BOUND.search(line)
    constant = bound and _CONSTANT.search(named.get(bound.group(1), ''))
    if constant:
      return int(constant.group(1))
  raise ValueError(f'no trip count for {while_line.strip()[:200]}')


def costed_instructions(text: str) -> tuple[list[dict], list[dict]]:
  """The compiled module's instructions that carry estimated cycles, each with the times
  it runs per step (the product of its enclosing loops' trip counts), and the loops."""
  computations, entry = hlo_computations(text)
  costed, loops = [], []

  def walk(name: str, times: int):
    for line in computations[name]:
      match = _INSTRUCTION.match(line)
      if not match:
        continue
      instruction, opcode = match.groups()
      cycles, op_name = _CYCLES.search(line), _OP_NAME.search(line)
      op_name = op_name.group(1).replace("\\'", "'") if op_name else instruction
      if cycles:
        costed.append({'instruction': instruction, 'opcode': opcode,
                       'cycles': int(cycles.group(1)), 'times': times, 'op_name': op_name})
      # Not a fusion's fused computation: its cycles are the fusion's. Every branch of a
      # conditional counts, as if all ran (an upper bound).
      if opcode in ('while', 'call', 'conditional'):
        trips = trip_count(line, computations) if opcode == 'while' else 1
        first = len(costed)
        for _, callees in _CALLEES.findall(line):
          for callee in callees.split(', '):
            walk(callee.lstrip('%'), times * trips)
        if opcode == 'while':
          loops.append({'op_name': op_name, 'trip_count': trips,
                        'cycles_per_trip': sum(c['cycles'] * c['times'] for c in costed[first:])
                                           // (times * trips)})

  walk(entry, 1)
  return costed, loops


def part_of(op_name: str) -> str:
  """The model part an instruction comes from: the first two module scopes of its op_name
  (e.g. 'encoder/trunk', 'CCT.decode/aux_decoders'), forward and backward alike; 'other'
  for the losses, the optimiser and the input. The model's own scope, 'CCT', is dropped:
  the train step's gradient wraps it (jvp(CCT)), evaluation's does not."""
  scopes = [s for s in op_name.split('/') if '(' not in s and '[' not in s and s != 'CCT']
  return '/'.join(scopes[:2]) if len(scopes) > 2 else 'other'


def estimate(text: str, cost: dict, images: int, clock_hz: float, peak_flops: float,
             hbm_bandwidth: float, top: int = 15) -> dict:
  """XLA's performance model of one compiled step, per device: its estimated cycles over
  the module (loops times their trips) at the chip's clock, beside the FLOPs and HBM-traffic
  bounds, and the `top` costliest instructions with the model code they come from."""
  costed, loops = costed_instructions(text)
  cycles = sum(c['cycles'] * c['times'] for c in costed)
  seconds = cycles / clock_hz
  optimal = float(cost.get('optimal_seconds', -1.0))
  ranked = sorted(costed, key=lambda c: -c['cycles'] * c['times'])[:top]
  parts = {}
  for c in costed:
    parts[part_of(c['op_name'])] = parts.get(part_of(c['op_name']), 0) + (
        c['cycles'] * c['times'] / cycles)
  return {
      'cycles': cycles, 'step_s': seconds,
      'optimal_s': optimal if optimal > 0 else None,  # negative on large programs
      'bytes_accessed': float(cost['bytes accessed']),
      'hbm_bound_s': float(cost['bytes accessed']) / hbm_bandwidth,
      'images_per_s': images / seconds, 'mfu': float(cost['flops']) / seconds / peak_flops,
      'loops': loops,
      'parts': dict(sorted(parts.items(), key=lambda item: -item[1])),
      'top': [dict(c, share=c['cycles'] * c['times'] / cycles) for c in ranked]}


def compile_step(jitted, args: tuple, images: int, device: Chip,
                 hlo_path: str | None = None) -> dict:
  """Compiles `jitted` for `args`; the per-device memory, FLOPs, bound on step time and
  XLA's estimate of it, or, where XLA finds it does not fit, its message. With `hlo_path`,
  the compiled program's text goes there: every instruction with its estimated cycles and
  the model code it comes from, beyond the report's top few."""
  start = time.perf_counter()
  try:
    compiled = jitted.lower(*args).compile()
  except jax.errors.JaxRuntimeError as error:
    if 'RESOURCE_EXHAUSTED' not in str(error):
      raise
    return {'fits': False, 'images_per_step': images, 'hbm_bytes': device.hbm_bytes,
            'xla_message': str(error).strip().splitlines()[0],
            'compile_s': time.perf_counter() - start}
  compile_s = time.perf_counter() - start
  if hlo_path:
    with open(hlo_path, 'w') as f:
      f.write(compiled.as_text())
  memory = memory_bytes(compiled)
  cost = cost_of(compiled)
  flops = float(cost['flops'])
  bound_s = flops / device.bf16_flops
  return {'fits': memory['total'] <= device.hbm_bytes, 'images_per_step': images,
          'memory_bytes': memory, 'hbm_bytes': device.hbm_bytes, 'flops_per_device': flops,
          'step_bound_s': bound_s, 'images_per_s_bound': images / bound_s,
          'estimate': estimate(compiled.as_text(), cost, images, device.clock_hz,
                               device.bf16_flops, device.hbm_bandwidth),
          'compile_s': compile_s}


STEPS = ('train', 'eval')


def compile_for_topology(config, hlo_dir: str | None = None) -> dict:
  """Compiles the steps `config.compile.steps` names of single-domain `config` for
  `config.compile.topology`; returns the report (see `format_report`). With `hlo_dir`,
  each step's compiled program is written there (`compile_step`)."""
  config = config.copy_and_resolve_references()
  config.model.cpu_conv = 'off'  # the TPU's convolutions, not the CPU workaround
  steps = config.compile.steps.split(',')
  if not steps or set(steps) - set(STEPS):
    raise errors.UserError(f'compile.steps takes a comma-separated subset of {STEPS}, got '
                           f'{config.compile.steps!r}')
  data_factory.check_data_config(config.data)
  methods.check_config(config)
  perturbations.build_perturbations(config.perturbations)
  topology = config.compile.topology
  chip = chip_of(topology)
  devices = topology_devices(topology)
  per_chip = devices_per_chip(devices)
  device = per_device(chip, per_chip)
  mesh = jax.sharding.Mesh(np.asarray(devices), ('data',))
  data = config.data
  model, method = methods.build(config)
  unlabelled_keys = method.unlabelled_keys(data)
  parallel.check_global_batch('data.batch_size_labelled', data.batch_size_labelled,
                              len(devices))
  if unlabelled_keys:
    parallel.check_global_batch('data.batch_size_unlabelled', data.batch_size_unlabelled,
                                len(devices))

  # The schedule's length is a constant of the program; it changes no shape or FLOP.
  num_steps = max(config.train.num_steps, 1)
  apply_fn, init_variables, tx, key, init_extra = train_step.state_recipe(
      config, model, method, num_steps)
  state = checkpointing.abstract_with_sharding(jax.eval_shape(
      lambda k: state_lib.initial(apply_fn, init_variables, tx, k, init_extra), key),
      parallel.replicated(mesh))
  report = {
      'topology': topology, 'device_kind': devices[0].device_kind, 'devices': len(devices),
      'devices_per_chip': per_chip, 'processes': len({d.process_index for d in devices}),
      'hbm_bytes_per_device': device.hbm_bytes,
      'bf16_peak_flops_per_device': device.bf16_flops,
      'hbm_bandwidth_per_device': device.hbm_bandwidth, 'chip_source': chip.source,
      'clock_hz': chip.clock_hz, 'clock_source': chip.clock_source,
      'model_dtype': config.model.dtype,
      'remat': sorted(models.remat_parts(config.model)), 'steps': {}}

  hlo_path = lambda step: (os.path.join(hlo_dir, f"{step}_{topology.replace(':', '_')}.hlo.txt")
                           if hlo_dir else None)
  if 'train' in steps:
    crop = data.crop_size
    image = lambda rows: ((rows, crop, crop, 3), np.float32)
    mask = lambda rows: ((rows, crop, crop), np.int32)
    labelled = batch_spec({'image': image(data.batch_size_labelled),
                           'mask': mask(data.batch_size_labelled)}, mesh)
    rows_u = data.batch_size_unlabelled
    unlabelled = (batch_spec({k: {'image': image, 'mask': mask}[k](rows_u)
                              for k in unlabelled_keys}, mesh) if unlabelled_keys else None)
    jitted = train_step.jit_train_step(train_step.make_train_step(config, model, method, num_steps),
                                       mesh, method.uses_unlabelled)
    images = data.batch_size_labelled + (rows_u if unlabelled_keys else 0)
    report['steps']['train'] = compile_step(jitted, (state, labelled, unlabelled), images,
                                            device, hlo_path('train'))
  if 'eval' in steps:
    side, rows = config.compile.eval_canvas, data.eval_batch_size * len(devices)
    batch = batch_spec({'image': ((rows, side, side, 3), np.float32),
                        'mask': ((rows, side, side), np.int32), 'valid': ((rows,), bool),
                        'size': ((rows, 2), np.int32)}, mesh)
    confusion = jax.ShapeDtypeStruct((data.num_classes,) * 2, np.int32,
                                     sharding=parallel.replicated(mesh))
    eval_step = evaluate.make_eval_step(train_step.make_predict_fn(config, model, method),
                                        data.num_classes, mesh)
    report['steps']['eval'] = compile_step(eval_step, (state, confusion, batch), rows,
                                           device, hlo_path('eval'))
  return report


def si(value: float, unit: str) -> str:
  """4.57e12, 'FLOP' -> '4.57 TFLOP'."""
  for prefix, scale in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('k', 1e3)):
    if abs(value) >= scale:
      return f'{value / scale:.3g} {prefix}{unit}'
  return f'{value:.3g} {unit}'


def format_estimates(report: dict) -> list[str]:
  steps = {name: step['estimate'] for name, step in report['steps'].items()
           if 'estimate' in step}
  if not steps:
    return []
  ms = lambda seconds: f'{1e3 * seconds:.3g}' if seconds else ''
  lines = [f"XLA's estimate of the step time per device: the TPU compiler's cost model (its "
           f"estimated cycles, loops times their trips, at {report['clock_hz'] / 1e9:.3g} GHz: "
           f"{report['clock_source']}), not a measurement; it leaves out the collectives. "
           f"HBM bound: bytes accessed over {si(report['hbm_bandwidth_per_device'], 'B/s')}.",
           '| step | XLA estimate ms | optimal_seconds ms | FLOPs bound ms | HBM bound ms | '
           'images/s | MFU | loops (trips) |', '|---|---|---|---|---|---|---|---|']
  for name, e in steps.items():
    loops = ', '.join(f"{loop['op_name'].split('/')[-2]} ({loop['trip_count']})"
                      for loop in e['loops'])
    lines.append(f"| {name} | {ms(e['step_s'])} | {ms(e['optimal_s'])} | "
                 f"{ms(report['steps'][name]['step_bound_s'])} | {ms(e['hbm_bound_s'])} | "
                 f"{e['images_per_s']:.0f} | {100 * e['mfu']:.1f}% | {loops} |")
  for name, e in steps.items():
    lines.append(f"The {name} step by model part (shares of XLA's estimate): " + ', '.join(
        f'{part} {100 * share:.1f}%' for part, share in e['parts'].items() if share >= 0.001))
    lines.append(f"The {name} step's costliest instructions by XLA's estimate (share of the "
                 'step, cycles per run x runs per step, the model code):')
    lines += top_lines(e)
  return lines


def top_lines(estimate: dict) -> list[str]:
  """`estimate`'s costliest instructions, a line each: share of the step, cycles per run
  x runs per step, opcode, the model code."""
  return [f"  {100 * c['share']:5.1f}%  {si(c['cycles'], 'cycles')} x {c['times']}  "
          f"{c['opcode']}  {re.sub(r'^jit[(][^/]*[)]/', '', c['op_name'])}"
          for c in estimate['top']]


def format_report(report: dict) -> str:
  gb = lambda n: si(n, 'B')
  lines = [f"{report['topology']}: {report['devices']} devices ({report['device_kind']}, "
           f"{report['processes']} hosts), {gb(report['hbm_bytes_per_device'])} of HBM and "
           f"{si(report['bf16_peak_flops_per_device'], 'FLOP/s')} (bf16) per device "
           f"({report['chip_source']}); model {report['model_dtype']}, remat "
           f"{report['remat'] or 'off'}",
           '| step | images | fits | arguments | outputs | temporaries | total | '
           'FLOP per device | step bound ms | images/s bound | compile s |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for name, step in report['steps'].items():
    if 'memory_bytes' not in step:
      lines.append(f"| {name} | {step['images_per_step']} | no | | | | | | | | "
                   f"{step['compile_s']:.0f} |")
      continue
    m = step['memory_bytes']
    lines.append(
        f"| {name} | {step['images_per_step']} | {'yes' if step['fits'] else 'no'} | "
        f"{gb(m['arguments'])} | {gb(m['outputs'])} | {gb(m['temporaries'])} | "
        f"{gb(m['total'])} | {si(step['flops_per_device'], 'FLOP')} | "
        f"{1e3 * step['step_bound_s']:.3g} | {step['images_per_s_bound']:.4g} | "
        f"{step['compile_s']:.0f} |")
  lines += format_estimates(report)
  for name, step in report['steps'].items():
    if not step['fits']:
      held = (f"needs {gb(step['memory_bytes']['total'])}" if 'memory_bytes' in step
              else f"XLA: {step['xla_message']}")
      lines.append(f"{name} step does not fit: {held}; a device has "
                   f"{gb(step['hbm_bytes'])}. Try a smaller per-device batch or "
                   "--config.model.remat='(\"trunk\", \"decoders\")'")
  return '\n'.join(lines)


def write_compile_report(config, workdir: str) -> dict:
  """`--mode=compile`: prints the report and writes workdir/compile_<topology>.json, and
  each step's compiled program as workdir/<step>_<topology>.hlo.txt."""
  os.makedirs(workdir, exist_ok=True)
  report = compile_for_topology(config, workdir)
  print(format_report(report))
  path = os.path.join(workdir, f"compile_{report['topology'].replace(':', '_')}.json")
  with open(path, 'w') as f:
    json.dump(report, f, indent=2)
  print(f'wrote {path}')
  return report
