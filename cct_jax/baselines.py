"""The input-consistency baselines of paper App. A (Table 4), `train.mode='mean_teacher'`
and `train.mode='input_vat'` (methods/mean_teacher.py, methods/input_vat.py): consistency
enforced on the input, where CCT enforces it on the encoder's output. Both train the
encoder and the main decoder only (no auxiliary decoders) through the same train step,
data, ramp and evaluation as CCT. Their shared settings and pass live here.
"""

import ml_collections


def default_baselines_config() -> ml_collections.ConfigDict:
  """The paper gives no hyper-parameters for these baselines (App. A); these are the
  original papers' (Tarvainen & Valpola 2017; Miyato et al. 2018, CIFAR-10)."""
  cfg = ml_collections.ConfigDict()
  # decay: teacher <- decay * teacher + (1 - decay) * student after every step.
  # noise_std: the student sees x_u + N(0, noise_std^2) per pixel and channel of the
  # normalised image, the teacher the clean x_u.
  cfg.mean_teacher = ml_collections.ConfigDict(dict(decay=0.99, noise_std=0.15))
  # r_adv = eps * the power-iteration direction, found on the normalised image (see
  # perturbations.adversarial_direction for method and xi). The exact direction ('hvp'):
  # xi * d at xi = 1e-6, about 1e-8 a pixel, is below float32's resolution of the image,
  # so the finite difference Miyato et al. use is rounding noise here (the demo's tiny
  # network on two 64x64 images: cosine 0.11 and -0.11 with the exact direction).
  cfg.input_vat = ml_collections.ConfigDict(dict(
      method='hvp', xi=1e-6, eps=6.0, iterations=1))
  return cfg


def train_logits(model, variables, images):
  """Main logits with batch-statistics BN, and the BN statistics this pass leaves."""
  (logits, _), updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  return logits, updates['batch_stats']
