"""`--mode=compile`: the steps compiled by libtpu for a TPU slice that is not here."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from cct_jax import compile_report, defaults, perturbations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# One auxiliary decoder (F-Noise) of the smoke config's seven: libtpu compiles the tiny
# model in seconds rather than half a minute; the report's sums are the same for any.
ONE_DECODER = tuple(f'--config.perturbations.{name}.count=0' for name in (
    'vat', 'dropout', 'cutout', 'context_mask', 'object_mask', 'feature_drop'))
# Two F-Noise decoders one after the other (model.remat): a loop of two trips forward and
# one backward, whose trip count the compiled HLO holds only in the loop's condition.
TWO_DECODERS_IN_A_LOOP = (*ONE_DECODER, '--config.perturbations.feature_noise.count=2',
                          "--config.model.remat=('trunk','decoders')")


def _smoke_config(topology='v5e:2x2'):
  config = defaults.load_config_file(os.path.join(REPO, 'configs', 'voc.py'), 'smoke')
  config.compile.update(topology=topology, eval_canvas=64)
  perturbations.set_counts(config.perturbations, {
      name: int(name == 'feature_noise')
      for name in perturbations.decoder_counts(config.perturbations)})
  return config


def test_the_tiny_model_compiles_for_a_v5e_slice_and_the_report_holds_its_numbers(tmp_path):
  """configs/voc.py:smoke from the command line for v5e:2x2 (4 chips): both steps fit
  with the global batches split over the 4 chips; the JSON holds what the table shows,
  and XLA's estimate counts the decoders' loops by their trips."""
  # Not what this process's own calls of topology_devices set: the command must set them.
  env = {k: v for k, v in os.environ.items()
         if k not in ('TPU_ACCELERATOR_TYPE', 'TPU_WORKER_ID', 'TPU_WORKER_HOSTNAMES')}
  env['JAX_PLATFORMS'] = 'cpu'
  run = subprocess.run(
      [sys.executable, '-m', 'cct_jax.main', '--config=configs/voc.py:smoke',
       f'--workdir={tmp_path}', '--mode=compile', '--config.compile.topology=v5e:2x2',
       '--config.compile.eval_canvas=64', '--compilation_cache=', *TWO_DECODERS_IN_A_LOOP],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  # libtpu, told it is one host (compile_report.ONE_HOST), prints none of its start-up
  # errors: no "unexpected worker hostname", no "please set env var TPU_ACCELERATOR_TYPE".
  assert 'TPU_WORKER_HOSTNAMES' not in run.stderr, run.stderr[-3000:]
  assert 'TPU_ACCELERATOR_TYPE' not in run.stderr, run.stderr[-3000:]
  with open(tmp_path / 'compile_v5e_2x2.json') as f:
    report = json.load(f)
  assert (report['devices'], report['processes'], report['device_kind']) == (
      4, 1, 'TPU v5 lite')
  assert report['hbm_bytes_per_device'] == 16 * 2**30
  config = _smoke_config()
  train, evaluation = report['steps']['train'], report['steps']['eval']
  assert train['images_per_step'] == (config.data.batch_size_labelled
                                      + config.data.batch_size_unlabelled)
  assert evaluation['images_per_step'] == 4 * config.data.eval_batch_size
  for step in (train, evaluation):
    memory = step['memory_bytes']
    assert step['fits'] and 0 < memory['total'] < step['hbm_bytes']
    assert memory['total'] == sum(v for k, v in memory.items() if k != 'total')
    assert step['flops_per_device'] > 0
    assert step['step_bound_s'] == pytest.approx(step['flops_per_device'] / 197e12)
    assert step['images_per_s_bound'] == pytest.approx(
        step['images_per_step'] / step['step_bound_s'])
  # Forward and backward of 2 + 2 crops with the auxiliary decoders per chip against a
  # forward pass of one 64x64 canvas.
  assert train['flops_per_device'] > evaluation['flops_per_device']
  assert '| train | 8 | yes |' in run.stdout and 'wrote' in run.stdout
  # Each step's compiled program beside the report, every instruction's cycles in it.
  for name in ('train', 'eval'):
    program = (tmp_path / f'{name}_v5e_2x2.hlo.txt').read_text()
    assert program.startswith('HloModule') and '"estimated_cycles"' in program
  assert report['clock_hz'] == 1.5e9 and report['hbm_bandwidth_per_device'] == 819e9
  for step in (train, evaluation):
    estimate = step['estimate']
    assert estimate['step_s'] == pytest.approx(estimate['cycles'] / 1.5e9)
    # The tiny model keeps the MXUs idle: the estimate is far above the FLOPs bound.
    assert estimate['step_s'] > 10 * step['step_bound_s']
    assert estimate['mfu'] == pytest.approx(step['step_bound_s'] / estimate['step_s'])
    assert estimate['images_per_s'] == pytest.approx(
        step['images_per_step'] / estimate['step_s'])
    assert estimate['hbm_bound_s'] == pytest.approx(estimate['bytes_accessed'] / 819e9)
    top = estimate['top']
    assert len(top) == 15 and all(c['op_name'] for c in top)
    assert [c['cycles'] * c['times'] for c in top] == sorted(
        (c['cycles'] * c['times'] for c in top), reverse=True)
    assert sum(c['share'] for c in top) < 1
  assert evaluation['estimate']['loops'] == []
  loops = train['estimate']['loops']
  assert sorted(loop['op_name'].split('/')[1] for loop in loops) == [
      'jvp(StackedDecoders.map)', 'transpose(jvp(StackedDecoders.map))']  # forward, backward
  assert all(loop['trip_count'] == 2 and loop['op_name'].endswith(
      'aux_decoders/feature_noise/while') for loop in loops)
  in_loops = [c for c in train['estimate']['top'] if '/while/body/' in c['op_name']]
  assert in_loops and all(c['times'] == 2 for c in in_loops)
  # The auxiliary decoders run by the loss, under their type's name; their keys split in
  # the model.
  for step, parts in ((train, {'encoder/trunk', 'encoder/psp', 'CCT.decode/main_decoder',
                               'aux_decoders/feature_noise', 'CCT.decode/aux_decoders',
                               'other'}),
                      (evaluation, {'encoder/trunk', 'encoder/psp', 'CCT.decode/main_decoder',
                                    'other'})):
    assert set(step['estimate']['parts']) == parts
    assert sum(step['estimate']['parts'].values()) == pytest.approx(1)
  assert 'not a measurement' in run.stdout and 'feature_noise (2)' in run.stdout


def test_a_batch_far_too_large_for_the_chip_is_reported_as_not_fitting():
  """256 images of 512x512 per chip: the report says no, with the numbers, and raises
  nothing. (The supervised step alone: the same answer, compiled in a third of the time.)"""
  config = _smoke_config()
  config.train.mode = 'supervised'
  config.compile.steps = 'train'
  config.data.update(crop_size=512, batch_size_labelled=1024, batch_size_unlabelled=1024)
  report = compile_report.compile_for_topology(config)
  train = report['steps']['train']
  assert not train['fits']
  text = compile_report.format_report(report)
  assert 'train step does not fit' in text and 'GB' in text


def test_a_global_batch_that_does_not_divide_over_the_slice_is_refused_by_name():
  config = _smoke_config()
  config.data.batch_size_labelled = 6
  with pytest.raises(ValueError, match='data.batch_size_labelled=6 does not divide over 4'):
    compile_report.compile_for_topology(config)


def test_an_unknown_chip_kind_is_refused_with_the_kinds_known():
  with pytest.raises(ValueError, match="chip kind must be one of .*'v5e'"):
    compile_report.compile_for_topology(_smoke_config('v3:2x2'))


@pytest.mark.parametrize('requires, install', [
    (['numpy>=2.2', 'libtpu==0.0.53.*; extra == "tpu"', 'requests; extra == "tpu"'],
     "`pip install 'libtpu==0.0.53.*'`, the release that pairs with jax "),
    (['numpy>=2.2', 'libtpu-nightly; extra == "tpu"'],
     'needs libtpu: the release that pairs with jax '),
])
def test_without_libtpu_the_message_names_the_release_jax_pairs_with(
    monkeypatch, requires, install):
  """The pairing is read from jax's metadata (its `tpu` extra); without one, a plain
  message."""
  monkeypatch.delenv('TPU_LIBRARY_PATH', raising=False)
  monkeypatch.setattr(compile_report.importlib.util, 'find_spec', lambda name: None)
  monkeypatch.setattr(compile_report.importlib.metadata, 'requires',
                      lambda name: requires if name == 'jax' else [])
  with pytest.raises(compile_report.LibtpuMissing) as error:
    compile_report.topology_devices('v5e:2x2')
  assert install + jax.__version__ in str(error.value)


# Two loops as the TPU compiler writes them: the outer one's trips only in its condition,
# the inner one's also in its backend config.
LOOPS_HLO = """HloModule jit_f, is_scheduled=true

%inner_body (p.0: (s32[])) -> (s32[]) {
  %p.0 = (s32[]{:T(128)}) parameter(0)
  ROOT %fusion.3 = (s32[]{:T(128)}) fusion(%p.0), kind=kLoop, calls=%fused, backend_config={"estimated_cycles":"1"}
}

%inner_cond (p.1: (s32[])) -> pred[] {
  %p.1 = (s32[]{:T(128)}) parameter(0)
  ROOT %lt.1 = pred[]{:T(512)} compare(%p.1, %p.1), direction=LT
}

%outer_body (p.2: (s32[])) -> (s32[]) {
  %p.2 = (s32[]{:T(128)}) parameter(0)
  %fusion.2 = (s32[]{:T(128)}) fusion(%p.2), kind=kOutput, calls=%fused, metadata={op_name="jit(f)/while/body/dot_general"}, backend_config={"estimated_cycles":"10"}
  ROOT %while.1 = (s32[]{:T(128)}) while(%fusion.2), condition=%inner_cond, body=%inner_body, backend_config={"known_trip_count":{"n":"4"}}
}

%outer_cond (p.3: (s32[])) -> pred[] {
  %constant.7 = s32[]{:T(128)} constant(3)
  %p.3 = (s32[]{:T(128)}) parameter(0)
  %get-tuple-element.1 = s32[]{:T(128)} get-tuple-element(%p.3), index=0
  ROOT %lt.2 = pred[]{:T(512)} compare(%get-tuple-element.1, %constant.7), direction=LT
}

ENTRY %main.9 (x.1: s32[]) -> (s32[]) {
  %x.1 = s32[]{:T(128)} parameter(0)
  %fusion.1 = (s32[]{:T(128)}) fusion(%x.1), kind=kLoop, calls=%fused, metadata={op_name="labelled[\\'image\\']"}, backend_config={"estimated_cycles":"100"}
  ROOT %while.2 = (s32[]{:T(128)}) while(%fusion.1), condition=%outer_cond, body=%outer_body
}
"""


def test_loop_bodies_count_once_per_trip_of_every_enclosing_loop():
  estimate = compile_report.estimate(
      LOOPS_HLO, {'flops': 71e3, 'bytes accessed': 819.0, 'optimal_seconds': -5.0},
      images=2, clock_hz=1e6, peak_flops=1e9, hbm_bandwidth=1e3)
  assert estimate['cycles'] == 100 + 3 * 10 + 3 * 4 * 1
  assert estimate['step_s'] == pytest.approx(142e-6)
  assert estimate['optimal_s'] is None  # XLA's negative figure is no estimate
  assert estimate['hbm_bound_s'] == pytest.approx(0.819)
  assert estimate['mfu'] == pytest.approx(71e3 / 142e-6 / 1e9)
  assert [(loop['trip_count'], loop['cycles_per_trip']) for loop in estimate['loops']] == [
      (4, 1), (3, 14)]
  assert estimate['parts'] == pytest.approx({'other': 112 / 142, 'while/body': 30 / 142})
  assert [(c['cycles'], c['times'], c['op_name']) for c in estimate['top']] == [
      (100, 1, "labelled['image']"), (10, 3, 'jit(f)/while/body/dot_general'),
      (1, 12, 'fusion.3')]


def test_xla_estimate_of_bf16_matmuls_on_a_v5e_meets_optimal_seconds_and_the_peak():
  """libtpu's cycles at the v5e's 1.5 GHz against its own optimal_seconds (a 1024 bf16
  matmul forward and its gradient) and against the FLOPs at the 197 TFLOP/s peak (a
  4096 matmul, which keeps the MXUs busy): the clock and the cycles' sum agree with both."""
  device = jax.sharding.SingleDeviceSharding(compile_report.topology_devices('v5e:2x2')[0])
  chip = compile_report.CHIPS['v5e']

  def estimated(f, n, arguments):
    spec = jax.ShapeDtypeStruct((n, n), jnp.bfloat16, sharding=device)
    compiled = jax.jit(f).lower(*(spec,) * arguments).compile()
    cost = compile_report.cost_of(compiled)
    return cost, compile_report.estimate(compiled.as_text(), cost, 1, chip.clock_hz,
                                         chip.bf16_flops, chip.hbm_bandwidth)

  cost, pair = estimated(lambda x, w: jax.grad(
      lambda w: jnp.sum(jnp.square((x @ w).astype(jnp.float32))))(w), 1024, 2)
  assert pair['step_s'] == pytest.approx(cost['optimal_seconds'], rel=0.1)
  cost, single = estimated(jnp.matmul, 4096, 2)
  assert cost['flops'] == 2 * 4096**3
  assert 0.9 < single['mfu'] <= 1
