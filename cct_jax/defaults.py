"""The defaults every config file starts from: the paper's VOC setting (sec. 4.1, App. J).

Each section's defaults live beside the code that reads them; this module only assembles
them, so a config file states what differs from the paper and nothing else.
"""

import dataclasses
import importlib.util
import os
from collections.abc import Mapping, Sequence

import ml_collections

from cct_jax import losses, methods, models, perturbations, schedules, weak
from cct_jax.data import factory as data_factory


def data_config(name: str) -> ml_collections.ConfigDict:
  return data_factory.default_data_config(name)


def train_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      # 'semi' (CCT), 'supervised' (labelled images only), or App. A's baselines
      # 'mean_teacher' and 'input_vat' (methods/)
      mode='semi',
      num_steps=0,  # 0: num_epochs passes over the unlabelled set
      num_epochs=50,
      log_every=20,
      # Several processes agree on a stop request (SIGTERM, e.g. Slurm's at the time limit)
      # every this many steps, by a collective: a stop lands within as many steps (and a
      # save) of the signal. One step pays a host-device round trip more.
      stop_check_every=5,
      # A run (or eval, predict, pseudo-labels) that makes no progress for this many seconds
      # is hung: every thread's stack is logged and the process exits non-zero (watchdog.py),
      # so that a restart resumes from the last checkpoint. Progress is seen when a step's
      # metrics are fetched (every log_every steps) and at every evaluation batch, so the
      # limit must outlast the first compile and log_every steps: the full VOC step takes
      # minutes to compile (README's TPU table has its compile times); 30 minutes leaves
      # room for that and a slow filesystem, yet frees a hung slice within the half hour.
      # 0: no watchdog.
      hang_timeout_s=1800,
      eval_every=1000,
      checkpoint_every=1000,
      max_checkpoints=2,
      num_pictures=8,  # validation/test examples drawn at each evaluation
      # 'A:B' writes a jax.profiler trace of steps A+1..B under <workdir>/profile (README
      # "Profiling"); '' none.
      profile_steps='',
  ))


def eval_config() -> ml_collections.ConfigDict:
  """Whole image by default; App. F's multi-scale + flip with scales=(0.5, ..., 1.5)."""
  return ml_collections.ConfigDict(dict(scales=(1.0,), flip=False, window=0))


def compile_config() -> ml_collections.ConfigDict:
  """`--mode=compile` (compile_report.py): the TPU slice to compile the steps for."""
  return ml_collections.ConfigDict(dict(
      # libtpu's topology name: chip kind and chips per dimension, e.g. 'v5e:2x4' (v5e-8),
      # 'v4:2x2x1' (v4-8), 'v5e:16x16' (v5e-256, 64 hosts).
      topology='v5e:2x4',
      # The side of the evaluation batches' square canvas (data/eval_batches.py): VOC's
      # largest images (500 pixels) go on 512.
      eval_canvas=512,
      steps='train,eval',  # the step functions compiled, comma-separated
  ))


def base_config(dataset: str = 'voc') -> ml_collections.ConfigDict:
  """The paper's setting on `dataset`, the model sized for its classes."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = data_config(dataset)
  config.model = models.default_model_config()
  config.model.num_classes = config.data.num_classes
  config.perturbations = perturbations.default_perturbation_config()
  config.loss = losses.default_loss_config()
  config.baselines = methods.default_config()
  config.optim = schedules.default_optim_config()
  config.train = train_config()
  config.eval = eval_config()
  config.weak = weak.default_weak_config()
  config.compile = compile_config()
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
  # App. E: off by default (it hurt in the paper's Table 7); lambda_adv = 2e-2.
  config.adversarial = ml_collections.ConfigDict(dict(enabled=False, weight=2e-2))
  # Whether each domain keeps its own BN running statistics of the shared encoder (not in
  # the paper): with one set, the statistics mix the domains and fit neither at evaluation.
  config.domain_batch_stats = False
  del config['data']
  del config.model['num_classes']
  return config


def shrink_for_smoke_test(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A few steps of a tiny model on 64x64 crops with one decoder per perturbation type:
  checks that a configuration runs end to end on a CPU, not what it learns."""
  config.model = models.tiny_model_config(config.data.num_classes)
  # No input worker processes: a few steps cannot repay starting them.
  config.data.update(crop_size=64, base_size=80, resize_to=(64, 64), batch_size_labelled=4,
                     batch_size_unlabelled=4, num_workers=0)
  config.weak.classifier_crop_size = 64
  return shrink_training_for_smoke_test(config)


def shrink_training_for_smoke_test(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Four steps, evaluated and saved every two, with one decoder per perturbation type
  (and four of the weak-label classifier): the part of `shrink_for_smoke_test` for a config
  whose model and data are small already."""
  perturbations.set_counts(config.perturbations, {
      name: min(count, 1)
      for name, count in perturbations.decoder_counts(config.perturbations).items()})
  config.train.update(num_steps=4, eval_every=2, log_every=2, checkpoint_every=2)
  config.weak.update(classifier_steps=4, classifier_log_every=2, classifier_checkpoint_every=2)
  return config


@dataclasses.dataclass(frozen=True)
class ConfigArg:
  """A config file's argument (`--config=configs/x.py:ARG`), parsed."""
  dataset: str | None = None  # one of the file's datasets, where it offers several
  labelled: int | None = None  # the number of labelled images
  smoke: bool = False  # a few steps of a tiny model (`shrink_for_smoke_test`)


def parse_arg(arg: str, path: str, datasets: Sequence[str] = ()) -> ConfigArg:
  """Comma-separated parts of a config file's argument, in any order: a dataset of
  `datasets`, a labelled count and/or `smoke` (e.g. 'fashion5,smoke', '1464')."""
  fields = {}
  for part in filter(None, arg.split(',')):
    if part == 'smoke':
      fields['smoke'] = True
    elif part in datasets:
      fields['dataset'] = part
    elif part.isdigit():
      fields['labelled'] = int(part)
    else:
      choices = ', '.join([*datasets, 'a labelled count', 'smoke'])
      raise ValueError(f'{path}: unknown argument {part!r}; give {choices}')
  return ConfigArg(**fields)


def finish(config: ml_collections.ConfigDict, arg: ConfigArg) -> ml_collections.ConfigDict:
  """The labelled count and the smoke variant of a config file's argument."""
  if arg.labelled is not None:
    config.data.num_labelled = arg.labelled
  return shrink_for_smoke_test(config) if arg.smoke else config
