"""Cityscapes, 19 classes, 512x1024 without augmentation (paper sec. 4.3, Table 7's
single-domain CCT baseline: 100 labelled images).

  python -m cct_jax.main --config=configs/cityscapes.py --workdir=runs/cityscapes \
      --config.data.root=/data/cityscapes --config.model.pretrained=resnet50_deep.npz

With TFDS's prepared `cityscapes/semantic_segmentation`, add
`--config.data.cityscapes.tfds_dir=~/tensorflow_datasets` (instead of data.root).
Expected: the paper reports Cityscapes only jointly with CamVid or SUN (Table 7); this
project has not measured it (its test data hold no Cityscapes).
Argument: the labelled count (default 100) or `smoke`.
"""

from cct_jax import defaults
from cct_jax.models import pretrained


def get_config(arg: str = '100'):
  config = defaults.base_config('cityscapes')
  # No background class: the object masks have nothing to mask.
  config.perturbations.context_mask.count = 0
  config.perturbations.object_mask.count = 0
  config.model.pretrained = pretrained.REQUIRED
  config.data.batch_size_labelled = 8
  config.data.batch_size_unlabelled = 8
  config.train.num_epochs = 50
  config.train.eval_every = 1000
  return defaults.finish(config, defaults.parse_arg(arg, 'configs/cityscapes.py'))
