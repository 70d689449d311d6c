"""Every training method in the multi-domain trainer (paper sec. 3.4 with App. A's
baselines): CCT runs in tests/test_multidomain.py, the others here, in a file of their own
so that `make test`'s two workers share the multi-domain runs."""

import json

import pytest

from cct_jax import segmentation, train


def _logged(workdir) -> set[str]:
  with open(workdir / 'metrics.jsonl') as f:
    return {k for line in f for k in json.loads(line)}


@pytest.mark.parametrize('mode', ['supervised', 'mean_teacher', 'input_vat'])
def test_every_method_trains_and_evaluates_on_two_domains(mode, two_domain_config, tmp_path):
  """The methods besides CCT (tests/test_multidomain.py) in the multi-domain trainer: an
  iteration per domain with its own unlabelled batch (none for the labels alone), both
  domains scored; no pictures asked for."""
  config = two_domain_config
  config.train.update(mode=mode, num_steps=2, eval_every=2, checkpoint_every=2,
                      num_pictures=0)
  # The trainer is under test, not the direction (tests/test_baselines.py): the finite
  # difference compiles in about half the time of the exact Hessian-vector product.
  config.baselines.input_vat.method = 'finite_difference'

  results = train.train_and_evaluate(config, str(tmp_path))
  assert set(results['domains']) == {'fashion5', 'tex5'} and results['step'] == 2
  logged = _logged(tmp_path)
  unsupervised = {'loss_unsup/fashion5', 'loss_unsup/tex5'}
  assert (unsupervised <= logged) == (mode != 'supervised')
  assert not list(tmp_path.glob('predictions_*.png'))


def test_pseudo_labels_of_a_domain_are_refused_by_a_method_without_auxiliary_decoders(
    two_domain_config):
  config = two_domain_config
  config.domains.tex5.pseudo_labels = '/some/pseudo_labels'
  config.train.mode = 'mean_teacher'
  with pytest.raises(ValueError, match="train.mode='mean_teacher' has none"):
    segmentation.check_config(config)
