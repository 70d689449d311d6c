"""The consistency baselines of paper App. A (Table 4), for `train.mode='mean_teacher'` and
`train.mode='input_vat'`: consistency enforced on the input, where CCT enforces it on the
encoder's output. Both train the encoder and the main decoder only (no auxiliary decoders)
through the same train step, data, ramp and evaluation as CCT (train.py).

Each method is a function building its unsupervised term,

    term(params, batch_stats, teacher, batch, key) -> (terms, updates)

  batch        the unlabelled batch: 'image', and 'mask' when it carries pseudo-labels.
  terms        {'unsup': the consistency loss, ...}: unweighted losses, which the train
               step weights (train.term_weights; CCT adds 'pairwise' and 'weak').
  updates      the collections the unlabelled pass leaves: 'batch_stats', 'losses'
               where the model sows terms of its own (train.sown_losses), and 'metrics'
               for diagnostics (models.cct.sown_metrics).
  teacher      Mean Teacher's EMA {'params', 'batch_stats'}; None for the other methods.
"""

import jax
import jax.numpy as jnp
import ml_collections

from cct_jax import losses, perturbations
from cct_jax.models import cct


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


def check_config(cfg: ml_collections.ConfigDict) -> None:
  if not 0.0 <= cfg.mean_teacher.decay <= 1.0:
    raise ValueError(f'baselines.mean_teacher.decay must be in [0, 1], got '
                     f'{cfg.mean_teacher.decay}')
  if cfg.input_vat.method not in perturbations.VAT_METHODS:
    raise ValueError(f'baselines.input_vat.method {cfg.input_vat.method!r} not in '
                     f'{perturbations.VAT_METHODS}')


def initial_teacher(params, batch_stats):
  """The teacher starts as a copy of the student, in buffers of its own (the train state
  is donated)."""
  return jax.tree.map(jnp.copy, {'params': params, 'batch_stats': batch_stats})


def ema_update(teacher, student, decay: float):
  """teacher <- decay * teacher + (1 - decay) * student, leaf by leaf (BN statistics too)."""
  return jax.tree.map(lambda t, s: decay * t + (1.0 - decay) * s, teacher, student)


def _train_logits(model, variables, images):
  """Main logits with batch-statistics BN, and the BN statistics this pass leaves."""
  (logits, _), updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  return logits, updates['batch_stats']


def mean_teacher_term(config, model):
  """MSE between the student's softmax on a noisy x_u and the teacher's on the clean x_u.

  The teacher runs with batch-statistics BN like the student (as the Mean Teacher code);
  the statistics of its pass are dropped, its own are the EMA of the student's. It is a
  target only: no gradient reaches it.
  """
  noise_std = config.baselines.mean_teacher.noise_std

  def term(params, batch_stats, teacher, batch, key):
    images = batch['image']
    noisy = images + noise_std * jax.random.normal(key, images.shape, images.dtype)
    student, batch_stats = _train_logits(model, {'params': params, 'batch_stats': batch_stats},
                                         noisy)
    target, _ = _train_logits(model, teacher, images)
    return ({'unsup': losses.consistency_loss(student[None], target, 'mse')},
            {'batch_stats': batch_stats})

  return term


def input_vat_term(config, model):
  """KL(p(x_u) || p(x_u + r_adv)), ||r_adv|| = eps per image, p(x_u) a target only.

  The adversarial passes use the BN statistics of their own batch, like the clean pass;
  only the clean pass's statistics are kept. The mean ||r_adv|| over the batch goes to the
  'metrics' collection as `perturbation_norm_input_vat`: 0 shows a direction that vanished.
  """
  cfg = config.baselines.input_vat

  def term(params, batch_stats, teacher, batch, key):
    del teacher
    images = batch['image']
    variables = {'params': params, 'batch_stats': batch_stats}
    clean, new_stats = _train_logits(model, variables, images)
    logits_fn = lambda x: _train_logits(model, variables, x)[0]
    r_adv = cfg.eps * perturbations.adversarial_direction(
        logits_fn, images, key, method=cfg.method, xi=cfg.xi, iterations=cfg.iterations)
    adversarial = logits_fn(images + r_adv)
    r_adv_norm = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(r_adv), axis=(1, 2, 3))))
    return ({'unsup': losses.consistency_loss(adversarial[None], clean, 'kl')},
            {'batch_stats': new_stats,
             cct.METRICS: {'perturbation_norm_input_vat': (r_adv_norm,)}})

  return term
