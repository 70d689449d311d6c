"""Weak image-level labels (paper sec. 3.3, SPEC 5): classification pre-training of the
encoder (classify.py), CAM pseudo-labels (cams.py) refined by the dense CRF (crf.py), and
their PNGs for training with the weak loss (pseudo_labels.py).

The workflow, three commands on one workdir W (README "Weak labels"):
  --mode=pretrain_cls    encoder + g_c on image-level labels      -> W/classifier
  --mode=pseudo_labels   CAMs -> thresholds -> CRF -> palette PNGs -> W/pseudo_labels
  --mode=train --config.model.encoder_from=W/classifier
               --config.data.pseudo_labels=W/pseudo_labels/crf    (L = L_s + w_u L_u + w_w L_w)
"""

import ml_collections

from cct_jax import crf, schedules


def default_weak_config() -> ml_collections.ConfigDict:
  """Sec. 3.3's thresholds and CRF; classification pre-training as this project's choice."""
  return ml_collections.ConfigDict(dict(
      theta_bg=0.05,  # max CAM below: background
      theta_fg=0.30,  # max CAM above: the argmax class; in between: 255 (unsure)
      cam_scales=(1.0,),  # App. F's multi-scale + flip: (0.5, 0.75, 1.0, 1.25, 1.5), True
      cam_flip=False,
      use_crf=True,  # pseudo-labels refined by the dense CRF (Krahenbuhl & Koltun)
      crf=crf.default_crf_config(),
      # Pre-training of encoder + g_c (--mode=pretrain_cls).
      classifier_optim=schedules.default_optim_config(),
      classifier_steps=2000,
      classifier_batch_size=16,
      classifier_log_every=50,
      classifier_checkpoint_every=500,
  ))
