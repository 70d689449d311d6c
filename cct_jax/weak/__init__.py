"""Weak image-level labels (paper sec. 3.3): classification pre-training of the encoder
(its training is cct_jax/classify.py), CAM pseudo-labels (cams.py) refined by the dense
CRF (crf.py), and their PNGs for training with the weak loss (pseudo_labels.py).

The workflow, three commands on one workdir W (README "Weak labels"):
  --mode=pretrain_cls    encoder + g_c on image-level labels      -> W/classifier
  --mode=pseudo_labels   CAMs -> thresholds -> CRFs -> palette PNGs -> W/pseudo_labels
  --mode=train --config.model.encoder_from=W/classifier
               --config.data.pseudo_labels=W/pseudo_labels/two_crfs
                                                          (L = L_s + w_u L_u + w_w L_w)
"""

import ml_collections
import numpy as np

from cct_jax import crf, models, schedules
from cct_jax.weak import cams


def default_weak_config() -> ml_collections.ConfigDict:
  """Sec. 3.3's thresholds and CRF; classification pre-training as this project's choice."""
  return ml_collections.ConfigDict(dict(
      theta_bg=0.05,  # max CAM below: background
      theta_fg=0.30,  # max CAM above: the argmax class; in between: 255 (unsure)
      cam_scales=(1.0,),  # App. F's multi-scale + flip: (0.5, 0.75, 1.0, 1.25, 1.5), True
      cam_flip=False,
      # How the CAMs become the pseudo-labels (weak/pseudo_labels.py RULES): 'two_crfs',
      # the authors' pipeline (IRN's: a CRF from each threshold, 255 where they leave it
      # unsure); 'one_crf', one CRF over all classes deciding every unsure pixel; 'cam',
      # the thresholds alone.
      pseudo_label_rule='two_crfs',
      crf=crf.default_crf_config(),
      # Pre-training of encoder + g_c (--mode=pretrain_cls).
      classifier_optim=schedules.default_optim_config(),
      classifier_steps=2000,
      classifier_batch_size=16,
      classifier_log_every=50,
      classifier_checkpoint_every=500,
  ))


# Where --mode=pretrain_cls writes under the workdir, and --mode=pseudo_labels reads.
CLASSIFIER_DIR = 'classifier'


def foreground_of(config) -> np.ndarray:
  """The class ids g_c predicts, in the order of its outputs."""
  return cams.foreground_classes(config.model.num_classes,
                                 config.perturbations.background_class)


def classifier(config) -> models.Classifier:
  """The encoder of `config.model` with g_c over its foreground classes."""
  return models.classifier_from_config(config.model, len(foreground_of(config)))
