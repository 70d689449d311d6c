"""Weak image-level labels (paper sec. 3.3): classification pre-training of g_c and its
network (its training is cct_jax/classify.py), CAM pseudo-labels (cams.py) refined by the
dense CRF (crf.py), and their PNGs for training with the weak loss (pseudo_labels.py).

The workflow, three commands on one workdir W (README "Weak labels"):
  --mode=pretrain_cls    g_c on image-level labels                 -> W/classifier
  --mode=pseudo_labels   CAMs -> thresholds -> CRFs -> palette PNGs -> W/pseudo_labels
  --mode=train --config.data.pseudo_labels=W/pseudo_labels/two_crfs
               [--config.model.encoder_from=W/classifier, weak.classifier='encoder']
                                                          (L = L_s + w_u L_u + w_w L_w)
"""

import ml_collections
import numpy as np

from cct_jax import crf, models, schedules
from cct_jax.weak import cams


def default_weak_config() -> ml_collections.ConfigDict:
  """Sec. 3.3's thresholds and CRF; the CAMs made as the authors' pseudo-labels were
  (`pseudo_labels/` of github.com/yassouali/CCT: IRN's run.py, train_cam.py, make_cam.py)."""
  return ml_collections.ConfigDict(dict(
      theta_bg=0.05,  # max CAM below: background
      theta_fg=0.30,  # max CAM above: the argmax class; in between: 255 (unsure)
      # Each image's CAMs: the mean over these rescaled copies, each with its mirror image
      # when cam_flip (IRN's make_cam.py: 1.0, 0.5, 1.5, 2.0 and flips).
      cam_scales=(1.0, 0.5, 1.5, 2.0),
      cam_flip=True,
      # How the CAMs become the pseudo-labels (weak/pseudo_labels.py RULES): 'two_crfs',
      # the authors' pipeline (IRN's: a CRF from each threshold, 255 where they leave it
      # unsure); 'one_crf', one CRF over all classes deciding every unsure pixel; 'cam',
      # the thresholds alone.
      pseudo_label_rule='two_crfs',
      crf=crf.default_crf_config(),
      # The network g_c sits on (models.CLASSIFIERS): 'irn', the authors' (the trunk alone
      # at output stride 16, frozen BN, no bias; the segmentation run then starts from
      # ImageNet), or 'encoder', the paper's text (CCT's encoder, which the segmentation
      # run can start from: model.encoder_from).
      classifier='irn',
      # Its training (--mode=pretrain_cls), IRN's train_cam.py: SGD at 0.1 for the trunk
      # and 1.0 for g_c with poly decay, weight decay 1e-4, stem and stages 1-2 frozen.
      # Their PolyOptimizer hands weight_decay to SGD's momentum argument by position, so
      # they ran with momentum 1e-4: none, here.
      classifier_optim=ml_collections.ConfigDict(dict(
          schedules.default_optim_config(), lr=1.0, momentum=0.0, frozen_stages=2)),
      # 5 epochs of VOC's train_aug (10582 images) in batches of 16, crops of 512.
      classifier_steps=3305,
      classifier_batch_size=16,
      classifier_crop_size=512,
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
  """g_c over its foreground classes on the network `weak.classifier` names."""
  return models.classifier_from_config(config.model, len(foreground_of(config)),
                                       config.weak.classifier)
