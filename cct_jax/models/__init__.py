"""The CCT network: dilated ResNet trunk, PSP, pixel-shuffle decoders and their wiring."""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from cct_jax import cpu_conv, errors
from cct_jax.models.cct import CCT, Encoder, init_variables
from cct_jax.models.classifier import Classifier, TrunkEncoder, class_activation_maps
from cct_jax.models.multidomain import MultiDomainCCT
from cct_jax.models.pretrained import FROM_SCRATCH
from cct_jax.models.resnet import Convolution, ResNet

CPU_CONV_SETTINGS = ('auto', 'on', 'off')
REMAT_PARTS = ('trunk', 'decoders')
# The networks g_c can sit on (`weak.classifier`, see `classifier_from_config`).
CLASSIFIERS = ('irn', 'encoder')


def default_model_config() -> ml_collections.ConfigDict:
  """Deep-stem dilated ResNet-50 at output stride 8 with PSP, 21 classes (paper sec. 4.1)."""
  return ml_collections.ConfigDict(dict(
      num_classes=21,
      stem='deep',  # 'deep' (the authors' ImageNet weights) or 'torchvision'
      stage_sizes=(3, 4, 6, 3),
      width=64,
      output_stride=8,
      psp_features=512,
      psp_bins=(1, 2, 3, 6),
      decoder_final_relu=True,
      decoder_width=0,  # channels of the decoders' upsampling blocks; 0: the class count
      # 'bfloat16': mixed precision (computation in bf16; parameters, optimiser state,
      # batch statistics and losses in float32)
      dtype='float32',
      # An .npz from tools/convert_torch_resnet.py, or 'none': the trunk from scratch. The
      # paper's configs empty it, so that a run without ImageNet weights is a choice.
      pretrained=FROM_SCRATCH,
      encoder_from='',  # a --mode=pretrain_cls folder (<workdir>/classifier): its encoder
      # The trunk's and PSP's convolutions through cct_jax.cpu_conv, which routes around
      # XLA:CPU's slow kernel gradients: 'on', 'off', or 'auto' (on when the default
      # backend is the CPU). The same sums either way.
      cpu_conv='auto',
      # Parts whose activations the backward pass computes again instead of keeping
      # (jax.checkpoint), for memory: 'trunk' (each ResNet block), 'decoders' (each
      # auxiliary decoder). The same numbers; more FLOPs (--mode=compile shows both).
      remat=(),
  ))


def tiny_model_config(num_classes: int) -> ml_collections.ConfigDict:
  """A narrow one-block-per-stage variant of the same architecture, for CPU and tests."""
  config = default_model_config()
  config.num_classes = num_classes
  config.stage_sizes = (1, 1, 1, 1)
  config.width = 8
  config.psp_features = 32
  return config


def convolution_from_config(setting: str) -> Convolution:
  """The convolution `model.cpu_conv` asks for (see `default_model_config`)."""
  if setting not in CPU_CONV_SETTINGS:
    raise errors.UserError(f'model.cpu_conv must be one of {CPU_CONV_SETTINGS}, got {setting!r}')
  if setting == 'on' or (setting == 'auto' and jax.default_backend() == 'cpu'):
    return cpu_conv.conv_general_dilated
  return lax.conv_general_dilated


def remat_parts(model_cfg) -> frozenset[str]:
  """`model.remat`, checked."""
  parts = frozenset(model_cfg.remat)
  if parts - set(REMAT_PARTS):
    raise errors.UserError(f'model.remat takes parts of {REMAT_PARTS}, got '
                           f'{tuple(model_cfg.remat)}')
  return parts


def encoder_from_config(model_cfg) -> Encoder:
  """The shared encoder described by a config's `model` section."""
  return Encoder(
      stage_sizes=tuple(model_cfg.stage_sizes),
      width=model_cfg.width,
      stem=model_cfg.stem,
      output_stride=model_cfg.output_stride,
      psp_features=model_cfg.psp_features,
      psp_bins=tuple(model_cfg.psp_bins),
      dtype=jnp.dtype(model_cfg.dtype),
      convolution=convolution_from_config(model_cfg.cpu_conv),
      remat='trunk' in remat_parts(model_cfg),
  )


def model_from_config(model_cfg, aux_counts: Mapping[str, int] | None = None,
                      domains: Mapping[str, int] | None = None,
                      adversarial_weight: float = 0.0) -> CCT | MultiDomainCCT:
  """Builds the network described by a config's `model` section.

  `aux_counts` (perturbation type -> number of auxiliary decoders) is None for a model
  that only ever runs the encoder and main decoder (supervised training, evaluation).
  `domains` (name -> class count) makes the multi-domain network: one shared encoder and
  each domain's decoders, with App. E's discriminator at `adversarial_weight` > 0.
  """
  shared = dict(encoder=encoder_from_config(model_cfg), aux_counts=dict(aux_counts or {}),
                final_relu=model_cfg.decoder_final_relu, decoder_width=model_cfg.decoder_width,
                remat_decoders='decoders' in remat_parts(model_cfg))
  if domains:
    return MultiDomainCCT(num_classes=dict(domains), adversarial_weight=adversarial_weight,
                          **shared)
  return CCT(num_classes=model_cfg.num_classes, **shared)


def classifier_from_config(model_cfg, num_outputs: int, kind: str) -> Classifier:
  """The classification branch g_c (sec. 3.3) over one of `CLASSIFIERS`:

  'encoder': CCT's encoder of `model_cfg` (trunk + PSP, output stride as configured), its
    BatchNorm training as in segmentation; what the paper's text describes, and what a
    segmentation run can start from (`model.encoder_from`).
  'irn': the trunk of `model_cfg` alone at output stride 16 (layer4's features, no PSP),
    BatchNorm frozen and g_c without bias: IRN's CAM network (Ahn et al.; resnet50_cam.py
    in the authors' `pseudo_labels/`), which made the pseudo-labels of the paper's tables.
  """
  if kind == 'encoder':
    return Classifier(num_outputs, encoder=encoder_from_config(model_cfg))
  if kind == 'irn':
    trunk = ResNet(tuple(model_cfg.stage_sizes), model_cfg.width, model_cfg.stem,
                   output_stride=16, dtype=jnp.dtype(model_cfg.dtype),
                   convolution=convolution_from_config(model_cfg.cpu_conv))
    return Classifier(num_outputs, encoder=TrunkEncoder(trunk), use_bias=False,
                      frozen_batch_norm=True)
  raise errors.UserError(f'weak.classifier must be one of {CLASSIFIERS}, got {kind!r}')


__all__ = ['CCT', 'CLASSIFIERS', 'Classifier', 'Encoder', 'MultiDomainCCT', 'class_activation_maps',
           'classifier_from_config', 'convolution_from_config', 'default_model_config',
           'encoder_from_config', 'init_variables', 'model_from_config', 'remat_parts',
           'tiny_model_config']
