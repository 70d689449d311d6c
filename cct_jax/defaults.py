"""The defaults every config file starts from (SPEC.md: the VOC setting of the paper).

Each section's defaults live beside the code that reads them; this module only assembles
them, so a config file states what differs from the paper and nothing else.
"""

import importlib.util
import os
from collections.abc import Mapping

import ml_collections

from cct_jax import baselines, losses, multidomain, perturbations, schedules, weak
from cct_jax.data import factory as data_factory


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
      decoder_width=0,  # channels of the decoders' upsampling blocks; 0: the class count
      # 'bfloat16': mixed precision (computation in bf16; parameters, optimiser state,
      # batch statistics and losses in float32)
      dtype='float32',
      pretrained='',  # an .npz from tools/convert_torch_resnet.py; '' trains from scratch
      encoder_from='',  # a --mode=pretrain_cls folder (<workdir>/classifier): its encoder
  ))


def tiny_model_config(num_classes: int) -> ml_collections.ConfigDict:
  """A narrow one-block-per-stage variant of the same architecture, for CPU and tests."""
  config = model_config()
  config.num_classes = num_classes
  config.stage_sizes = (1, 1, 1, 1)
  config.width = 8
  config.psp_features = 32
  return config


def data_config(name: str) -> ml_collections.ConfigDict:
  return data_factory.default_data_config(name)


def train_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      # 'semi' (CCT), 'supervised' (labelled images only), or App. A's baselines
      # 'mean_teacher' and 'input_vat' (baselines.py)
      mode='semi',
      num_steps=0,  # 0: num_epochs passes over the unlabelled set
      num_epochs=50,
      log_every=20,
      eval_every=1000,
      checkpoint_every=1000,
      max_checkpoints=2,
      num_pictures=8,  # validation/test examples drawn at each evaluation
  ))


def eval_config() -> ml_collections.ConfigDict:
  """Whole image by default; App. F's multi-scale + flip with scales=(0.5, ..., 1.5)."""
  return ml_collections.ConfigDict(dict(scales=(1.0,), flip=False, window=0))


def base_config(dataset: str = 'voc') -> ml_collections.ConfigDict:
  """The paper's setting on `dataset`, the model sized for its classes."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = data_config(dataset)
  config.model = model_config()
  config.model.num_classes = config.data.num_classes
  config.perturbations = perturbations.default_perturbation_config()
  config.loss = losses.default_loss_config()
  config.baselines = baselines.default_baselines_config()
  config.optim = schedules.default_optim_config()
  config.train = train_config()
  config.eval = eval_config()
  config.weak = weak.default_weak_config()
  return config


def load_config_file(path: str, arg: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file at `path`: a multi-domain config file builds on
  the single-domain ones beside it."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def multi_domain(config: ml_collections.ConfigDict,
                 domains: Mapping[str, ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
  """`config` trained on several domains at once (paper sec. 3.4): `domains` maps each
  domain's name to its data config, which replaces `config.data`; each domain's decoders
  get its `num_classes`, so `model.num_classes` goes too. Adds the adversarial branch of
  App. E, off, and `domain_batch_stats` (BN running statistics per domain), off."""
  config.domains = ml_collections.ConfigDict(dict(domains))
  config.adversarial = multidomain.default_adversarial_config()
  config.domain_batch_stats = multidomain.DOMAIN_BATCH_STATS
  del config['data']
  del config.model['num_classes']
  return config


def shrink_for_smoke_test(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A few steps of a tiny model on 64x64 crops with one decoder per perturbation type:
  checks that a configuration runs end to end on a CPU, not what it learns."""
  config.model = tiny_model_config(config.data.num_classes)
  config.data.update(crop_size=64, base_size=80, resize_to=(64, 64), batch_size_labelled=4,
                     batch_size_unlabelled=4)
  config.perturbations.counts = {name: min(count, 1)
                                 for name, count in config.perturbations.counts.items()}
  config.train.update(num_steps=4, eval_every=2, log_every=2, checkpoint_every=2)
  return config


def finish(config: ml_collections.ConfigDict, arg: str) -> ml_collections.ConfigDict:
  """A config file's argument: the number of labelled images, or 'smoke'."""
  if arg == 'smoke':
    return shrink_for_smoke_test(config)
  config.data.num_labelled = int(arg)
  return config
