"""Cityscapes + CamVid at once (paper sec. 3.4 and 4.5, Table 2): partially overlapping
label spaces (19 and 11 classes), n labelled images per domain, the rest unlabelled.

  python -m cct_jax.main --config=configs/cityscapes_camvid.py:50 --workdir=runs/cs_cvd_50 \
      --config.domains.cityscapes.root=/data/cityscapes \
      --config.domains.camvid.root=/data/CamVid --config.model.pretrained=resnet50_deep.npz

Baseline (labelled images only, still alternating): `--config.train.mode=supervised`;
App. E's discriminator: `--config.adversarial.enabled=True`. Each domain keeps its
single-domain config (configs/cityscapes.py, configs/camvid.py: 512x1024 and 360x480
without augmentation, batch 8 + 8, the object masks off); 50 epochs of the larger
unlabelled set per domain.

Expected (the paper; mIoU on Cityscapes val, CamVid test, and their average):

| method | n=50 CS | CVD | avg | n=100 CS | CVD | avg |
|---|---|---|---|---|---|---|
| baseline | 31.2 | 40.0 | 35.6 | 37.3 | 34.4 | 35.9 |
| CCT | 35.0 | 53.7 | 44.4 | 40.1 | 55.7 | 47.9 |
| CCT + L_adv (Table 7) | 35.3 | 49.2 | 42.2 | 37.7 | 52.8 | 45.2 |

The numbers are the paper's; this project has not measured them (its test data hold no
Cityscapes or CamVid).
Argument: the labelled count per domain (50 or 100, the paper's; default 100) or `smoke`.
"""

import os

from cct_jax import defaults

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str = '100'):
  singles = {name: defaults.load_config_file(os.path.join(HERE, f'{name}.py'), arg)
             for name in ('cityscapes', 'camvid')}
  return defaults.multi_domain(singles['cityscapes'],
                               {name: c.data for name, c in singles.items()})
