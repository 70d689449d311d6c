"""benchmarks/accuracy.py: its plan, arms and summary (the runs themselves are the benchmark)."""

import importlib.util
import json
import os
import sys

import pytest

from cct_jax import perturbations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name, path):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


accuracy = _load('accuracy_benchmark', 'benchmarks/accuracy.py')
demo = _load('demo_config', 'configs/demo.py')


def _assert_config_fields(config, overrides):
  """Every `--config.a.b=value` names a field of `config` (a typo would stop the run)."""
  for override in overrides:
    *parents, leaf = override.removeprefix('--config.').split('=')[0].split('.')
    node = config
    for part in parents:
      node = node[part]
    assert leaf in node, override


def _record(arm, seed, miou, dataset='tex5', labelled=25):
  return dict(dataset=dataset, arm=arm, labelled=labelled, seed=seed, miou=miou)


def test_summary_means_stds_and_paired_gains():
  records = [_record('supervised', 0, 0.50), _record('supervised', 1, 0.60),
             _record('cct', 0, 0.58), _record('cct', 1, 0.64)]
  rows = accuracy.summarise(records)
  assert [r['arm'] for r in rows] == ['supervised', 'cct']  # the baseline first
  rows = {r['arm']: r for r in rows}
  assert rows['supervised']['miou'] == pytest.approx(55.0)
  assert rows['supervised']['std'] == pytest.approx(7.0711, abs=1e-3)  # sample std
  assert rows['cct']['per_seed'] == pytest.approx([58.0, 64.0])
  # Paired per seed: +8 and +4.
  assert rows['cct']['gain'] == pytest.approx(6.0)
  assert rows['cct']['gain_std'] == pytest.approx(2.8284, abs=1e-3)
  assert 'gain' not in rows['supervised']
  table = accuracy.markdown(accuracy.summarise(records))
  assert '| tex5 | 25 | cct | 61.0 +- 4.2 | +6.0 +- 2.8 | 58.0 / 64.0 |' in table
  one_seed = accuracy.markdown(accuracy.summarise(records[::2]))  # seed 0 only: no spread
  assert '| tex5 | 25 | cct | 58.0 (one seed) | +8.0 (one seed) | 58.0 |' in one_seed


def test_plan_covers_every_budget_seed_and_ablation_arm():
  runs = accuracy.plan(['tex5', 'fashion5'], [25, 50, 100], [0, 1, 2], [0])
  main = [r for r in runs if r.arm in ('supervised', 'cct')]
  assert len(main) == 2 * 3 * 3 * 2
  ablation = {r.arm for r in runs if r.arm not in ('supervised', 'cct')}
  assert ablation == {f'only_{t}' for t in perturbations.PERTURBATIONS} | {'cct_ab_ce'}
  assert {r.labelled for r in runs if r.arm in ablation} == {25}
  assert len({r.name for r in runs}) == len(runs)  # one folder per run


def test_arm_overrides_name_existing_config_fields():
  config = demo.get_config('fashion5')
  arms = list(accuracy.VARIANTS) + [f'only_{t}' for t in perturbations.PERTURBATIONS]
  for arm in arms:
    _assert_config_fields(config, accuracy.arm_overrides(arm))
  only_vat = accuracy.arm_overrides('only_vat')
  assert '--config.perturbations.vat.count=0' not in only_vat
  assert len(only_vat) == len(perturbations.PERTURBATIONS) - 1
  with pytest.raises(ValueError, match='unknown arm'):
    accuracy.arm_overrides('only_colour')


def test_plot_writes_a_png(tmp_path):
  records = [_record(arm, seed, 0.5 + 0.01 * n / 25 + 0.05 * (arm == 'cct'), labelled=n)
             for arm in ('supervised', 'cct') for seed in (0, 1) for n in (25, 50)]
  path = tmp_path / 'plot.png'
  accuracy.plot(accuracy.summarise(records), str(path))
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_plan_puts_the_smallest_budget_first():
  runs = accuracy.plan(['tex5', 'fashion5'], [25, 50, 100], [0, 1, 2], [0])
  first = runs[:2 * 3 * 2]
  assert {(r.labelled, r.seed) for r in first} == {(25, 0), (25, 1), (25, 2)}
  assert {(r.labelled, r.seed) for r in runs[12:20]} == {(50, 0), (100, 0)}


def test_baselines_come_after_the_default_set_at_the_two_smallest_budgets():
  default = accuracy.plan(['tex5', 'fashion5'], [25, 50, 100], [0, 1, 2], [0])
  runs = accuracy.plan(['tex5', 'fashion5'], [25, 50, 100], [0, 1, 2], [0], baselines=True)
  assert runs[:len(default)] == default
  extra = runs[len(default):]
  assert {(r.arm, r.labelled) for r in extra if r.arm in ('mean_teacher', 'input_vat')} == {
      (arm, n) for arm in ('mean_teacher', 'input_vat') for n in (25, 50)}
  losses = {r.arm for r in extra} - {'mean_teacher', 'input_vat'}
  assert {'cct_kl', 'cct_js', 'cct_confidence_mask', 'cct_pairwise', 'cct_ramp_exp'} <= losses
  assert 'cct_ramp_gaussian' not in losses  # the default, already CCT's row
  # The smallest budget's answers (Table 4's first column and the ablation) come first.
  assert [r.labelled for r in extra] == sorted(r.labelled for r in extra)


def test_weak_arms_chain_pretraining_pseudo_labels_and_training():
  runs = accuracy.plan(['tex5', 'fashion5'], [25, 50], [0, 1, 2], [], weak=True)
  weak = [r for r in runs if r.arm in accuracy.WEAK_ARMS]
  assert {(r.dataset, r.labelled) for r in weak} == {('fashion5', 25)}
  assert len(weak) == 4 * 3 and runs[-len(weak):] == weak
  # The arms of a seed one after the other (both rules paired on one classifier, then
  # IRN's network's), the control last.
  assert [r.arm for r in weak[:3]] == ['cct_weak', 'cct_weak_one_crf', 'cct_weak_irn']
  assert weak[0].seed == weak[1].seed == weak[2].seed
  config = demo.get_config('fashion5')
  full = accuracy.Run('fashion5', 'cct_weak', 25, 1).commands('runs/accuracy')
  modes = [next((a for a in c if a.startswith('--mode=')), '--mode=train') for c in full]
  assert modes == ['--mode=pretrain_cls', '--mode=pseudo_labels', '--mode=train']
  prep = 'runs/accuracy/fashion5/weak_prep/n25/seed1'
  assert [a for c in full for a in c if a.startswith('--workdir=')] == [
      f'--workdir={prep}', f'--workdir={prep}', '--workdir=runs/accuracy/fashion5/cct_weak/n25/seed1']
  assert '--config.weak.pseudo_label_rule=two_crfs' in full[1]
  assert f'--config.data.pseudo_labels={prep}/pseudo_labels/two_crfs' in full[-1]
  one_crf = accuracy.Run('fashion5', 'cct_weak_one_crf', 25, 1).commands('runs/accuracy')
  assert '--config.weak.pseudo_label_rule=one_crf' in one_crf[1]
  assert f'--config.data.pseudo_labels={prep}/pseudo_labels/one_crf' in one_crf[-1]
  assert one_crf[0] == full[0]
  assert f'--config.model.encoder_from={prep}/classifier' in full[-1]
  for command in full:
    _assert_config_fields(config, [a for a in command if a.startswith('--config.')])
  irn = accuracy.Run('fashion5', 'cct_weak_irn', 25, 1).commands('runs/accuracy')
  # Its own classifier and pseudo-labels, IRN's network; CCT from scratch, not from it.
  assert [a for a in irn[0] if a.startswith('--workdir=')] == [f'--workdir={prep}/irn']
  assert '--config.weak.classifier=irn' in irn[0] and '--config.weak.classifier=irn' in irn[1]
  assert f'--config.data.pseudo_labels={prep}/irn/pseudo_labels/two_crfs' in irn[-1]
  assert not any(a.startswith('--config.model.encoder_from') for a in irn[-1])
  for command in irn:
    _assert_config_fields(config, [a for a in command if a.startswith('--config.')])
  encoder_only = accuracy.Run('fashion5', 'cct_cls_encoder', 25, 1).commands('runs/accuracy')
  assert len(encoder_only) == 2 and not any('pseudo_labels' in a for a in encoder_only[-1])
  assert encoder_only[0] == full[0]  # one classifier serves both arms of a seed


def test_pseudo_label_scores_are_averaged_and_tabled():
  scores = {kind: dict(miou=miou, miou_unsure_as_wrong=miou - 0.1, labelled_fraction=share)
            for kind, miou, share in (('cam', 0.4, 0.6), ('two_crfs', 0.5, 0.8),
                                      ('one_crf', 0.3, 1.0))}
  record = accuracy.pseudo_label_record(scores, 'two_crfs')
  assert record == pytest.approx(dict(
      cam_miou=0.4, cam_miou_unsure_as_wrong=0.3, cam_labelled_fraction=0.6,
      refined_miou=0.5, refined_miou_unsure_as_wrong=0.4, refined_labelled_fraction=0.8))
  records = [dict(_record('cct_weak', s, 0.3, dataset='fashion5'),
                  pseudo_labels=dict(record, cam_miou=0.40 + s / 100)) for s in (0, 2)]
  rows = accuracy.summarise(records)
  assert rows[0]['pseudo_labels']['cam_miou'] == pytest.approx(41.0)
  assert '| fashion5 | 25 | cct_weak | 41.0 / 30.0 | 60.0 | 50.0 / 40.0 | 80.0 |' in (
      accuracy.markdown(rows))


def test_two_domain_runs_give_each_domain_and_the_average():
  runs = accuracy.plan(['tex5', 'fashion5'], [25, 50], [0, 1], [], two_domains=True)
  two = [r for r in runs if r.dataset == accuracy.TWO_DOMAINS]
  assert {r.arm for r in two} == {'supervised', 'cct', 'cct_adversarial'} and len(two) == 6
  command = two[0].commands('runs/accuracy')[0]
  assert f'--config={accuracy.TWO_DOMAIN_CONFIG}' in command
  assert {'--config.domains.tex5.num_labelled=25', '--config.domains.fashion5.num_labelled=25',
          '--config.domain_batch_stats=True'} <= set(command)
  two_domain_config = _load('two_domain_config', accuracy.TWO_DOMAIN_CONFIG).get_config()
  for run in two:
    _assert_config_fields(two_domain_config, [
        a for a in run.commands('w')[0] if a.startswith('--config.')])
  scores = {'domains': {'tex5': {'miou': 0.6}, 'fashion5': {'miou': 0.3}}, 'miou': 0.45}
  records = accuracy.records_of(two[0], scores, [])
  assert {r['dataset']: r['miou'] for r in records} == {
      'tex5+fashion5:tex5': 0.6, 'tex5+fashion5:fashion5': 0.3, 'tex5+fashion5:average': 0.45}
  assert accuracy.results_path(two[0], 'w').endswith('results.json')


def test_recorded_runs_are_read_back_only_with_the_same_commands():
  run = accuracy.Run('tex5', 'cct', 25, 1)
  commands = accuracy.command_lines(run, os.path.join(REPO, 'runs', 'accuracy'))
  assert commands[0].startswith('python -m cct_jax.main --config=configs/demo.py:tex5 ')
  assert commands[0].endswith('--workdir=runs/accuracy/tex5/cct/n25/seed1')
  scores = {'miou': 0.6, 'per_class_iou': {'brick': 0.7}}
  records = accuracy.records_of(run, scores, commands)
  assert accuracy.recorded_scores(run, records, commands) == scores
  assert accuracy.recorded_scores(accuracy.Run('tex5', 'cct', 25, 2), records, commands) is None
  changed = [commands[0] + ' --config.optim.lr=0.2']  # another config: trained again
  assert accuracy.recorded_scores(run, records, changed) is None
  two = accuracy.Run(accuracy.TWO_DOMAINS, 'cct', 25, 0)
  two_commands = accuracy.command_lines(two, 'w')
  two_scores = {'miou': 0.45, 'domains': {'tex5': {'miou': 0.6}, 'fashion5': {'miou': 0.3}}}
  two_records = accuracy.records_of(two, two_scores, two_commands)
  assert accuracy.recorded_scores(two, records + two_records, two_commands) == two_scores


def test_an_invocation_over_a_subset_keeps_the_other_sets_records():
  weak = accuracy.Run('fashion5', 'cct_weak', 25, 0)
  two = accuracy.Run(accuracy.TWO_DOMAINS, 'cct', 25, 0)
  two_scores = {'miou': 0.45, 'domains': {'tex5': {'miou': 0.6}, 'fashion5': {'miou': 0.3}}}
  records = (accuracy.records_of(weak, {'miou': 0.4, 'per_class_iou': {}}, ['w']) +
             accuracy.records_of(two, two_scores, ['t']))
  kept = accuracy.records_outside([two, accuracy.Run('tex5', 'cct', 25, 0)], records)
  assert [(r['dataset'], r['arm']) for r in kept] == [('fashion5', 'cct_weak')]
  assert accuracy.records_outside([weak], records) == records[1:]  # every domain's record


def test_an_interrupted_invocation_keeps_earlier_records_of_the_runs_it_has_not_reached(
    tmp_path, monkeypatch):
  first, later = accuracy.Run('tex5', 'supervised', 25, 0), accuracy.Run('tex5', 'cct', 25, 0)
  # Recorded with another command line, so this invocation trains `later` again.
  earlier = accuracy.records_of(later, {'miou': 0.5, 'per_class_iou': {}}, ['older command'])
  for name in ('RESULTS_DIR', 'DOCS_DIR'):
    monkeypatch.setattr(accuracy, name, str(tmp_path))
  with open(accuracy.results_stem(False) + '.json', 'w') as f:
    json.dump({'runs': earlier}, f)
  monkeypatch.setattr(accuracy, 'plan', lambda *args, **kwargs: [first, later])

  def execute(run, workdir):
    del workdir
    if run == later:
      raise KeyboardInterrupt  # the benchmark stopped while `later` trained
    return {'miou': 0.4, 'per_class_iou': {}}

  monkeypatch.setattr(accuracy, 'execute', execute)
  monkeypatch.setattr(sys, 'argv', ['accuracy.py', '--datasets=tex5',
                                    f'--runs_dir={tmp_path / "runs"}'])
  with pytest.raises(KeyboardInterrupt):
    accuracy.main()
  with open(accuracy.results_stem(False) + '.json') as f:
    saved = json.load(f)
  assert sorted((r['arm'], r['miou']) for r in saved['runs']) == [('cct', 0.5),
                                                                  ('supervised', 0.4)]
  assert saved['runs_reported'] == '1 of 2 planned, 1 kept from earlier invocations'


def test_table4_arranges_the_baselines_by_dataset_and_budget():
  records = [_record(arm, seed, miou) for arm, seed, miou in (
      ('supervised', 0, 0.50), ('supervised', 1, 0.60), ('cct', 0, 0.58), ('cct', 1, 0.64),
      ('mean_teacher', 0, 0.52), ('mean_teacher', 1, 0.56), ('input_vat', 0, 0.48))]
  records.append(_record('supervised', 0, 0.70, labelled=100))  # no baseline ran there
  lines = accuracy.table4(accuracy.summarise(records))
  assert lines[1:] == ['| method | tex5 25 |', '|---|---|', '| supervised | 55.0 +- 7.1 |',
                       '| mean_teacher | 54.0 +- 2.8 |', '| input_vat | 48.0 (one seed) |',
                       '| cct | 61.0 +- 4.2 |']
  assert accuracy.table4(accuracy.summarise(records[:4])) == []  # no baseline: no table
