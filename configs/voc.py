"""PASCAL VOC 2012 + SBD, the paper's main setting (paper Table 4: 69.4 val mIoU
with 1464 labelled images and ImageNet weights).

  python -m cct_jax.main --config=configs/voc.py:1464 --workdir=runs/voc_1464 \
      --config.data.root=/data/VOCdevkit/VOC2012 \
      --config.data.voc.split_dir=/data/cct_splits \
      --config.model.pretrained=resnet50_deep.npz

The argument is the labelled count (60 ... 1464; with `data.voc.split_dir` the authors'
`{n}_train_supervised.txt` files; without it 1464 labels exactly VOC's train.txt, the
paper's split, and other counts are a seeded draw from train_aug) or `smoke`: a
tiny model on 64x64 crops for four steps, to check a dataset and the set-up on a CPU.
50 epochs of the unlabelled set, batch 10 + 10, crop 320 (the authors' configs/config.json).
Without `model.pretrained` the run stops and says where the ImageNet weights come from;
`--config.model.pretrained=none` trains the trunk from scratch.
"""

from cct_jax import defaults
from cct_jax.models import pretrained


def get_config(arg: str = '1464'):
  config = defaults.base_config('voc')
  config.model.pretrained = pretrained.REQUIRED
  config.train.num_epochs = 50
  config.train.eval_every = 2000
  config.train.checkpoint_every = 1000
  return defaults.finish(config, defaults.parse_arg(arg, 'configs/voc.py'))
