# Helpers shared by the launch scripts (sourced, not run).
# shellcheck shell=bash

# One word as the shell reads it back: bare when safe, else in single quotes.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# A command as one line the shell reads back word for word.
command_line() {
  local word line=""
  for word in "$@"; do
    line+=" $(quote "$word")"
  done
  printf '%s' "${line# }"
}

# Prints a command, then runs it unless DRY_RUN is set.
run() {
  echo "+ $(command_line "$@")"
  if ((!DRY_RUN)); then
    "$@"
  fi
}

# Checks on this machine, before a slice is created or a job waits in a queue, what the
# run would stop on as it starts: the config file and every flag after it, read by
# cct_jax.main's own flags (so an override is read as the run reads it), the config's own
# checks, and, with DEVICES > 0, that each global batch divides over DEVICES devices.
# A mistake: one 'error:' line on stderr and a non-zero status. Prints model.pretrained
# when it is on a bucket, for the caller to look up: this machine may have neither gcsfs
# nor the bucket's credentials, so the checks take a local file in its place.
#   check_run PYTHON DEVICES --config=FILE --workdir=DIR [cct_jax.main flags]
check_run() {
  local python=$1
  shift
  (cd "$REPO" && "$python" - "$@") <<'EOF'
import sys

if sys.version_info < (3, 12):
  sys.exit(f'error: {sys.executable} is Python {sys.version.split()[0]}; cct-jax needs 3.12 '
           'or newer')
try:
  from absl import flags
  from cct_jax import main, parallel, segmentation
  from cct_jax.models import pretrained
except ImportError as e:
  sys.exit(f'error: {sys.executable} cannot run cct-jax ({e}); install it into that '
           'environment (pip install -e .)')

devices = int(sys.argv[1])
sys.argv = ['cct_jax.main', *sys.argv[2:]]  # where ml_collections looks for overrides
main.parse_flags(sys.argv)  # as the run parses them: a mistake ends here, said as it says it
config = flags.FLAGS.config

weights = config.model.pretrained
if '://' in weights:
  print(weights)
  with config.unlocked():
    config.model.pretrained = pretrained.__file__  # a file that exists, in the bucket's place
try:
  if flags.FLAGS.mode in ('train', 'eval', 'predict'):
    segmentation.check_config(config)
  if devices:
    for view in segmentation.targets(config).values():
      for batch in ('batch_size_labelled', 'batch_size_unlabelled'):
        parallel.check_global_batch(f'data.{batch}', view.data[batch], devices)
except ValueError as e:
  sys.exit(f'error: {e}')
EOF
}
