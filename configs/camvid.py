"""CamVid, 11 classes, 360x480 without augmentation (paper sec. 4.3, Table 7's single-domain
CCT baseline: 100 labelled images).

  python -m cct_jax.main --config=configs/camvid.py --workdir=runs/camvid \
      --config.data.root=/data/CamVid --config.model.pretrained=resnet50_deep.npz

Expected: above the labelled-only baseline at 20/50/100 labels (paper Fig. 5, CamVid test
set), the paper's result; this project has not measured it (its test data hold no CamVid).
Argument: the labelled count (default 100) or `smoke`.
"""

from cct_jax import defaults
from cct_jax.models import pretrained


def get_config(arg: str = '100'):
  config = defaults.base_config('camvid')
  # No background class: the object masks have nothing to mask.
  config.perturbations.context_mask.count = 0
  config.perturbations.object_mask.count = 0
  config.model.pretrained = pretrained.REQUIRED
  config.train.num_epochs = 50
  config.train.eval_every = 1000
  return defaults.finish(config, defaults.parse_arg(arg, 'configs/camvid.py'))
