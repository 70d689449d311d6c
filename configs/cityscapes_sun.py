"""Cityscapes + SUN RGB-D at once (paper sec. 3.4 and 4.5, Table 3): disjoint label spaces
(19 street classes, 13 indoor ones), 1.5k labelled images per domain.

  python -m cct_jax.main --config=configs/cityscapes_sun.py --workdir=runs/cs_sun \
      --config.domains.cityscapes.root=/data/cityscapes \
      --config.domains.sun.root=/data/SUNRGBD --config.model.pretrained=resnet50_deep.npz

Baseline: `--config.train.mode=supervised`; App. E's discriminator:
`--config.adversarial.enabled=True`. Cityscapes keeps configs/cityscapes.py; SUN RGB-D is
read at 480x640 without augmentation, batch 8 + 8; the object masks are off (neither has
a background class). SUN RGB-D has no validation split: its test split (5050 images, the
paper's "validation") both selects the checkpoint and is reported, as in the paper.

Expected (the paper, mIoU): baseline 54.3 (CS) / 38.1 (SUN) / 46.2 average; CCT 58.8 /
45.5 / 52.1. The numbers are the paper's; this project has not measured them (its test
data hold no Cityscapes or SUN RGB-D).
Argument: the labelled count per domain (default 1500) or `smoke`.
"""

import os

from cct_jax import defaults

HERE = os.path.dirname(os.path.abspath(__file__))


def sun_config(arg: str):
  config = defaults.base_config('sun')
  config.perturbations.context_mask.count = 0
  config.perturbations.object_mask.count = 0
  config.data.batch_size_labelled = 8
  config.data.batch_size_unlabelled = 8
  return defaults.finish(config, defaults.parse_arg(arg, 'configs/cityscapes_sun.py'))


def get_config(arg: str = '1500'):
  cityscapes = defaults.load_config_file(os.path.join(HERE, 'cityscapes.py'), arg)
  return defaults.multi_domain(cityscapes, {'cityscapes': cityscapes.data,
                                            'sun': sun_config(arg).data})
