"""CCT on the bundled texture mosaics (tex5, SPEC 6): a few labelled mosaics, many unlabelled.

  python -m cct_jax.main --config=configs/demo.py --workdir=runs/demo
  python -m cct_jax.main --config=configs/demo.py:smoke --workdir=runs/demo_smoke

The argument `smoke` shrinks everything so that train + eval + predict finish in under a
minute on a CPU (the test suite runs it).
"""

from cct_jax import defaults


def get_config(arg: str = ''):
  config = defaults.base_config('tex5')
  config.model = defaults.tiny_model_config(config.data.num_classes)
  # No background class in the mosaics: the mask-based perturbations have nothing to mask.
  config.perturbations.counts.update(context_mask=0, object_mask=0)
  config.train.mode = 'semi'
  config.train.num_steps = 600
  config.train.eval_every = 200
  config.train.log_every = 50
  config.train.checkpoint_every = 200
  config.data.batch_size_labelled = 8
  config.data.batch_size_unlabelled = 8
  config.data.eval_batch_size = 20
  config.data.eval_pad_to = (64, 64)
  if arg == 'smoke':
    config.train.num_steps = 4
    config.train.eval_every = 2
    config.train.log_every = 2
    config.train.checkpoint_every = 2
    config.data.sizes = dict(train=64, val=8, test=8)
    config.data.labelled_pool = 16
    config.data.num_labelled = 4
    config.data.batch_size_labelled = 4
    config.data.batch_size_unlabelled = 4
    config.data.eval_batch_size = 4
    config.perturbations.counts = dict(vat=1, dropout=1, cutout=1, context_mask=0,
                                       object_mask=0, feature_drop=1, feature_noise=1)
  return config
