"""A method besides CCT in a multi-domain run (paper sec. 3.4 with App. A's baselines): CCT
runs in tests/test_multidomain.py; here Mean Teacher, whose state of its own (the teacher)
must follow the alternating domains. Single- and multi-domain runs share one loop and step
per target (train.py), and every method trains single-domain in tests/test_baselines.py.
A file of its own, so that `make test`'s two workers share the multi-domain runs."""

import json

import pytest

from cct_jax import segmentation, train


def _logged(workdir) -> set[str]:
  with open(workdir / 'metrics.jsonl') as f:
    return {k for line in f for k in json.loads(line)}


def test_mean_teacher_trains_and_evaluates_on_two_domains(two_domain_config, tmp_path):
  """An iteration per domain with its own unlabelled batch, both domains scored; no
  pictures asked for."""
  config = two_domain_config
  config.train.update(mode='mean_teacher', num_steps=2, eval_every=2, checkpoint_every=2,
                      num_pictures=0)

  results = train.train_and_evaluate(config, str(tmp_path))
  assert set(results['domains']) == {'fashion5', 'tex5'} and results['step'] == 2
  assert {'loss_unsup/fashion5', 'loss_unsup/tex5'} <= _logged(tmp_path)
  assert not list(tmp_path.glob('predictions_*.png'))


def test_pseudo_labels_of_a_domain_are_refused_by_a_method_without_auxiliary_decoders(
    two_domain_config):
  config = two_domain_config
  config.domains.tex5.pseudo_labels = '/some/pseudo_labels'
  config.train.mode = 'mean_teacher'
  with pytest.raises(ValueError, match="train.mode='mean_teacher' has none"):
    segmentation.check_config(config)
