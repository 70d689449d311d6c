"""The defaults every config file starts from (SPEC.md: the VOC setting of the paper)."""

import ml_collections

# Perturbation types in roster order, with the paper's counts (sec. 4.4.1): K = 30.
DEFAULT_AUX_COUNTS = dict(vat=2, dropout=6, cutout=6, context_mask=2, object_mask=2,
                          feature_drop=6, feature_noise=6)


def model_config() -> ml_collections.ConfigDict:
  """Deep-stem dilated ResNet-50 at output stride 8 with PSP, 21 classes."""
  return ml_collections.ConfigDict(dict(
      num_classes=21,
      stem='deep',  # 'deep' (the authors' ImageNet weights) or 'torchvision'
      stage_sizes=(3, 4, 6, 3),
      width=64,
      output_stride=8,
      psp_features=512,
      psp_bins=(1, 2, 3, 6),
      decoder_final_relu=True,
      pretrained='',  # an .npz from tools/convert_torch_resnet.py; '' trains from scratch
  ))


def tiny_model_config(num_classes: int) -> ml_collections.ConfigDict:
  """A narrow one-block-per-stage variant of the same architecture, for CPU and tests."""
  config = model_config()
  config.num_classes = num_classes
  config.stage_sizes = (1, 1, 1, 1)
  config.width = 8
  config.psp_features = 32
  return config


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config()
  config.perturbations = ml_collections.ConfigDict(dict(counts=dict(DEFAULT_AUX_COUNTS)))
  return config
