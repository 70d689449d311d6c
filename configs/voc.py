"""PASCAL VOC 2012 (+ SBD), the paper's main setting (Table 4: 69.4 mIoU with 1464 labels).

  python -m cct_jax.main --config=configs/voc.py:1464 --workdir=runs/voc_1464

The argument is the labelled count (one of the authors' splits, 60 ... 1464) or `smoke`, a
tiny model on small images for a quick check on a CPU.
"""

from cct_jax import defaults


def get_config(arg: str = '1464'):
  config = defaults.base_config()
  if arg == 'smoke':
    config.model = defaults.tiny_model_config(num_classes=21)
  return config
