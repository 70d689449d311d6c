"""`--mode=compile`: the configured train and evaluation steps compiled for a TPU slice
that is not here, to see whether a run fits and how fast it can be before paying for it.

libtpu compiles for a named topology on any machine (`jax.experimental.topologies`): the
steps are lowered with the config's global batches sharded over the slice's chips, as a
real run shards them (parallel.py), and XLA's memory and cost analyses of the compiled
programs give, per device: the bytes of the arguments, outputs and temporaries against
its HBM, the FLOPs of one step, and so a lower bound on the step's time at the chip's
bf16 peak. A step that does not fit is reported with XLA's numbers, not raised.
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

from cct_jax import (checkpointing, evaluate, methods, models, parallel, perturbations,
                     train_step)
from cct_jax import state as state_lib
from cct_jax.data import factory as data_factory

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  hbm_bytes: int  # per chip
  bf16_flops: float  # peak per chip, per second
  source: str


# The topology name's prefix (e.g. 'v5e' of 'v5e:2x4') -> the chip's published figures.
CHIPS = {
    'v4': Chip(32 * GIB, 275e12, 'https://cloud.google.com/tpu/docs/v4'),
    'v5e': Chip(16 * GIB, 197e12, 'https://cloud.google.com/tpu/docs/v5e'),
    'v5p': Chip(95 * GIB, 459e12, 'https://cloud.google.com/tpu/docs/v5p'),
    'v6e': Chip(32 * GIB, 918e12, 'https://cloud.google.com/tpu/docs/v6e'),
}


def chip_of(topology: str) -> Chip:
  kind = topology.split(':')[0]
  if kind not in CHIPS:
    raise ValueError(f'compile.topology={topology!r}: the chip kind must be one of '
                     f'{tuple(CHIPS)} (e.g. v5e:2x4)')
  return CHIPS[kind]


class LibtpuMissing(RuntimeError):
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
  # libtpu takes a lock that keeps a second process off the chips; compiling uses none.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  return topologies.get_topology_desc(platform='tpu', topology_name=topology).devices


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


def flops_of(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def compile_step(jitted, args: tuple, images: int, hbm_bytes: int,
                 peak_flops: float) -> dict:
  """Compiles `jitted` for `args`; the per-device memory, FLOPs and bound on step time,
  or, where XLA finds it does not fit, its message."""
  start = time.perf_counter()
  try:
    compiled = jitted.lower(*args).compile()
  except jax.errors.JaxRuntimeError as error:
    if 'RESOURCE_EXHAUSTED' not in str(error):
      raise
    return {'fits': False, 'images_per_step': images, 'hbm_bytes': hbm_bytes,
            'xla_message': str(error).strip().splitlines()[0],
            'compile_s': time.perf_counter() - start}
  compile_s = time.perf_counter() - start
  memory = memory_bytes(compiled)
  flops = flops_of(compiled)
  bound_s = flops / peak_flops
  return {'fits': memory['total'] <= hbm_bytes, 'images_per_step': images,
          'memory_bytes': memory, 'hbm_bytes': hbm_bytes, 'flops_per_device': flops,
          'step_bound_s': bound_s, 'images_per_s_bound': images / bound_s,
          'compile_s': compile_s}


STEPS = ('train', 'eval')


def compile_for_topology(config) -> dict:
  """Compiles the steps `config.compile.steps` names of single-domain `config` for
  `config.compile.topology`; returns the report (see `format_report`)."""
  config = config.copy_and_resolve_references()
  config.model.cpu_conv = 'off'  # the TPU's convolutions, not the CPU workaround
  steps = config.compile.steps.split(',')
  if not steps or set(steps) - set(STEPS):
    raise ValueError(f'compile.steps takes a comma-separated subset of {STEPS}, got '
                     f'{config.compile.steps!r}')
  data_factory.check_data_config(config.data)
  methods.check_config(config)
  perturbations.build_perturbations(config.perturbations)
  topology = config.compile.topology
  chip = chip_of(topology)
  devices = topology_devices(topology)
  per_chip = devices_per_chip(devices)
  hbm, peak = chip.hbm_bytes // per_chip, chip.bf16_flops / per_chip
  mesh = jax.sharding.Mesh(np.asarray(devices), ('data',))
  data = config.data
  method = methods.get(config)
  unlabelled_keys = method.unlabelled_keys(data)
  parallel.check_global_batch('data.batch_size_labelled', data.batch_size_labelled,
                              len(devices))
  if unlabelled_keys:
    parallel.check_global_batch('data.batch_size_unlabelled', data.batch_size_unlabelled,
                                len(devices))

  model = models.model_from_config(config.model, methods.aux_counts(config))
  # The schedule's length is a constant of the program; it changes no shape or FLOP.
  num_steps = max(config.train.num_steps, 1)
  apply_fn, init_variables, tx, key, init_extra = train_step.state_recipe(config, model, num_steps)
  state = checkpointing.abstract_with_sharding(jax.eval_shape(
      lambda k: state_lib.initial(apply_fn, init_variables, tx, k, init_extra), key),
      parallel.replicated(mesh))
  report = {
      'topology': topology, 'device_kind': devices[0].device_kind, 'devices': len(devices),
      'devices_per_chip': per_chip, 'processes': len({d.process_index for d in devices}),
      'hbm_bytes_per_device': hbm, 'bf16_peak_flops_per_device': peak,
      'chip_source': chip.source, 'model_dtype': config.model.dtype,
      'remat': sorted(models.remat_parts(config.model)), 'steps': {}}

  if 'train' in steps:
    crop = data.crop_size
    image = lambda rows: ((rows, crop, crop, 3), np.float32)
    mask = lambda rows: ((rows, crop, crop), np.int32)
    labelled = batch_spec({'image': image(data.batch_size_labelled),
                           'mask': mask(data.batch_size_labelled)}, mesh)
    rows_u = data.batch_size_unlabelled
    unlabelled = (batch_spec({k: {'image': image, 'mask': mask}[k](rows_u)
                              for k in unlabelled_keys}, mesh) if unlabelled_keys else None)
    jitted = train_step.jit_train_step(train_step.make_train_step(config, model, num_steps),
                                       mesh, method.uses_unlabelled)
    images = data.batch_size_labelled + (rows_u if unlabelled_keys else 0)
    report['steps']['train'] = compile_step(jitted, (state, labelled, unlabelled), images,
                                            hbm, peak)
  if 'eval' in steps:
    side, rows = config.compile.eval_canvas, data.eval_batch_size * len(devices)
    batch = batch_spec({'image': ((rows, side, side, 3), np.float32),
                        'mask': ((rows, side, side), np.int32), 'valid': ((rows,), bool),
                        'size': ((rows, 2), np.int32)}, mesh)
    confusion = jax.ShapeDtypeStruct((data.num_classes,) * 2, np.int32,
                                     sharding=parallel.replicated(mesh))
    eval_step = evaluate.make_eval_step(train_step.make_predict_fn(config, model),
                                        data.num_classes, mesh)
    report['steps']['eval'] = compile_step(eval_step, (state, confusion, batch), rows, hbm,
                                           peak)
  return report


def si(value: float, unit: str) -> str:
  """4.57e12, 'FLOP' -> '4.57 TFLOP'."""
  for prefix, scale in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('k', 1e3)):
    if abs(value) >= scale:
      return f'{value / scale:.3g} {prefix}{unit}'
  return f'{value:.3g} {unit}'


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
  for name, step in report['steps'].items():
    if not step['fits']:
      held = (f"needs {gb(step['memory_bytes']['total'])}" if 'memory_bytes' in step
              else f"XLA: {step['xla_message']}")
      lines.append(f"{name} step does not fit: {held}; a device has "
                   f"{gb(step['hbm_bytes'])}. Try a smaller per-device batch or "
                   "--config.model.remat='(\"trunk\", \"decoders\")'")
  return '\n'.join(lines)


def write_compile_report(config, workdir: str) -> dict:
  """`--mode=compile`: prints the report and writes workdir/compile_<topology>.json."""
  report = compile_for_topology(config)
  print(format_report(report))
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, f"compile_{report['topology'].replace(':', '_')}.json")
  with open(path, 'w') as f:
    json.dump(report, f, indent=2)
  print(f'wrote {path}')
  return report
