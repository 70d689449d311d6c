"""Command line entry point; intentionally kept short; the work happens in library functions.

  python -m cct_jax.main --config=configs/voc.py --mode=summary --workdir=runs/voc
"""

from absl import app, flags
from ml_collections import config_flags

from cct_jax import summary

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.DEFINE_enum('mode', 'summary', ['summary'], 'What to do.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.mode == 'summary':
    summary.write_summary(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
