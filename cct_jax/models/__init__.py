"""The CCT network: dilated ResNet trunk, PSP, pixel-shuffle decoders and their wiring."""

from collections.abc import Mapping

import jax.numpy as jnp

from cct_jax.models.cct import CCT, Encoder, init_variables
from cct_jax.models.classifier import Classifier, class_activation_maps
from cct_jax.models.multidomain import MultiDomainCCT


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
  )


def model_from_config(model_cfg, aux_counts: Mapping[str, int] | None = None) -> CCT:
  """Builds the network described by a config's `model` section.

  `aux_counts` (perturbation type -> number of auxiliary decoders) is None for a model
  that only ever runs the encoder and main decoder (supervised training, evaluation).
  """
  return CCT(num_classes=model_cfg.num_classes, encoder=encoder_from_config(model_cfg),
             aux_counts=dict(aux_counts or {}), final_relu=model_cfg.decoder_final_relu,
             decoder_width=model_cfg.decoder_width)


def classifier_from_config(model_cfg, num_outputs: int) -> Classifier:
  """The encoder of `model_cfg` with the classification branch g_c (sec. 3.3)."""
  return Classifier(num_outputs, encoder=encoder_from_config(model_cfg))


__all__ = ['CCT', 'Classifier', 'Encoder', 'MultiDomainCCT', 'class_activation_maps',
           'classifier_from_config', 'encoder_from_config', 'init_variables',
           'model_from_config']
