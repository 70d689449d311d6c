"""Command line entry point; intentionally kept short: the work happens in library functions.

  python -m cct_jax.main --config=configs/demo.py --workdir=runs/demo              # train
  python -m cct_jax.main --config=configs/demo.py --workdir=runs/demo --mode=eval
  python -m cct_jax.main --config=configs/demo.py --workdir=runs/demo --mode=predict \
      --input=DIR --output=DIR
  python -m cct_jax.main --config=configs/voc.py --workdir=runs/voc --mode=summary \
      --config.data.root=VOCdevkit/VOC2012     # parameter counts; checks every file
  python -m cct_jax.main --config=configs/voc.py --workdir=runs/voc --mode=compile \
      --config.compile.topology=v5e:2x4       # fits a TPU slice? (needs libtpu)

Weak image-level labels (sec. 3.3; README "Weak labels"): --mode=pretrain_cls, then
--mode=pseudo_labels, then train with --config.data.pseudo_labels=W/pseudo_labels/two_crfs
(and, with weak.classifier='encoder', --config.model.encoder_from=W/classifier).

A multi-domain config (one with `domains`, e.g. configs/demo_two_domains.py) trains its
domains in turn (cct_jax/multidomain.py); --domain picks whose decoders eval (default: all)
and predict use.

Several hosts (launch/tpu_pod.sh, launch/slurm_gpu.sh): the same command on every host
with --multihost (or CCT_MULTIHOST=1); jax finds the other processes on Cloud TPU and
Slurm, elsewhere add --coordinator_address=HOST:PORT --num_processes=N --process_id=I.

A mode that stops making progress for train.hang_timeout_s seconds, or a process whose
peer is gone, exits non-zero with one 'error:' line (watchdog.py): the same command, run
again, goes on from the workdir.
"""

import os
import sys

from absl import app, flags
import jax
from ml_collections import config_flags

from cct_jax import (classify, compile_report, config_overrides, data, errors, parallel, predict,
                     summary, train, watchdog, writers)
from cct_jax.weak import pseudo_labels

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.DEFINE_enum('mode', 'train',
                  ['train', 'eval', 'predict', 'summary', 'compile', 'pretrain_cls',
                   'pseudo_labels'],
                  'What to do.')
flags.DEFINE_string('input', None, 'predict: a folder of images (every visible file; subfolders '
                    'are not searched), or one image file.')
flags.DEFINE_string('output', None, 'predict: the folder for label PNGs and overlays; not the '
                    'input folder nor inside it.')
flags.DEFINE_integer('step', None, 'eval, predict: the checkpoint of this step (default: the '
                     'best, else the latest).')
flags.DEFINE_string('domain', None, 'Multi-domain configs: the domain whose decoders eval '
                    '(default: every domain) and predict (required) use.')
flags.DEFINE_bool('multihost', os.environ.get('CCT_MULTIHOST', '0') == '1',
                  'Start jax.distributed first (default: $CCT_MULTIHOST == 1); without the '
                  'three flags below jax detects Cloud TPU pods and Slurm itself.')
flags.DEFINE_string('coordinator_address', None, 'multihost: HOST:PORT of process 0.')
flags.DEFINE_integer('num_processes', None, 'multihost: the number of processes.')
flags.DEFINE_integer('process_id', None, 'multihost: this process, 0 .. num_processes - 1.')
flags.DEFINE_integer('heartbeat_timeout_s', parallel.HEARTBEAT_TIMEOUT_S,
                     'multihost: jax ends every process once one has sent no heartbeat for '
                     'this long (parallel.initialize_distributed); the tests shorten it.')
flags.DEFINE_string(
    'compilation_cache',
    os.environ.get('CCT_COMPILATION_CACHE',
                   os.path.join(os.path.expanduser('~'), '.cache', 'cct_jax', 'xla')),
    "XLA's persistent compilation cache: a second run of the same shapes skips compiling "
    "(default: $CCT_COMPILATION_CACHE or ~/.cache/cct_jax/xla; '' turns it off).")
flags.mark_flags_as_required(['config', 'workdir'])

# How the work of each mode goes on when the same command runs again after a failure;
# also the modes whose progress the watchdog follows (summary and compile report none).
GOES_ON = {
    'train': 'resumes from the latest checkpoint in {workdir}',
    'pretrain_cls': 'resumes from the latest checkpoint in {workdir}',
    'pseudo_labels': 'goes on with the weak images not labelled yet',
    'eval': 'scores the checkpoint again',
    'predict': 'predicts the folder again',
}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  writers.quiet_library_logs()
  if FLAGS.compilation_cache:
    jax.config.update('jax_compilation_cache_dir', FLAGS.compilation_cache)
  multihost = FLAGS.multihost or FLAGS.coordinator_address
  goes_on = (f'the same command, run again{" on every host" if multihost else ""}, '
             + GOES_ON.get(FLAGS.mode, '').format(workdir=FLAGS.workdir))
  hang_timeout_s = FLAGS.config.train.hang_timeout_s if FLAGS.mode in GOES_ON else 0
  try:
    if multihost:
      parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                      FLAGS.process_id,
                                      heartbeat_timeout_s=FLAGS.heartbeat_timeout_s)
    with watchdog.armed(hang_timeout_s, resume=goes_on):
      run(FLAGS.config, FLAGS.workdir)
  except errors.UserError as error:  # the user's to fix: the message, not a traceback
    sys.exit(f'error: {error}')
  except jax.errors.JaxRuntimeError as error:
    watchdog.exit_if_process_lost(error, resume=goes_on)
    raise


def run(config, workdir: str) -> None:
  """The work of `--mode`."""
  multi_domain = 'domains' in config
  if FLAGS.domain and not multi_domain:
    raise errors.UserError('--domain picks the decoders of a multi-domain config (one with '
                           'config.domains)')
  if FLAGS.mode == 'train':
    train.train_and_evaluate(config, workdir)
  elif FLAGS.mode == 'eval':
    train.evaluate_checkpoint(config, workdir, domain=FLAGS.domain, step=FLAGS.step)
  elif FLAGS.mode == 'predict':
    if not (FLAGS.input and FLAGS.output):
      raise errors.UserError('--mode=predict needs --input=DIR (or FILE) and --output=DIR')
    predict.predict_folder(config, workdir, FLAGS.input, FLAGS.output, domain=FLAGS.domain,
                           step=FLAGS.step)
  elif FLAGS.mode == 'pretrain_cls':
    classify.train_classifier(config, workdir)
  elif FLAGS.mode == 'pseudo_labels':
    pseudo_labels.write_pseudo_labels(config, workdir)
  elif multi_domain:
    raise errors.UserError(f'--mode={FLAGS.mode} takes a single-domain config')
  elif FLAGS.mode == 'compile':
    compile_report.write_compile_report(config, workdir)
  else:
    summary.write_summary(config, workdir)
    if config.data.root:  # read every file once, listing every problem
      data.check_dataset(config.data)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing of the flags (app.run's default), where an override of a field the
  config does not have ends in one 'error:' line naming the field meant, rather than in
  ml_collections' traceback: the parsing happens before `main`, outside its except."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):  # what ml_collections raises for a missing field
    problem = unknown_overrides(argv)
    if problem is None:  # not an override's doing: a bug, which keeps its traceback
      raise
    sys.exit(f'error: {problem}')


def unknown_overrides(argv: list[str]) -> str | None:
  """The line for `--config.<field>` overrides in `argv` of fields that the config, loaded
  again without them, lacks; None when every one names a field."""
  argv = FLAGS.read_flags_from_files(argv, force_gnu=False)  # as ml_collections reads them
  source = config_overrides.config_argument(argv)
  if source is None:
    return None
  config = FLAGS['config'].parser.parse(source)
  return config_overrides.check_overrides(config, argv, source)


def cli() -> None:
  """`python -m cct_jax.main`."""
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  cli()
