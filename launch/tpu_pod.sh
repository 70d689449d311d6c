#!/usr/bin/env bash
# Trains cct-jax on a Cloud TPU VM pod slice: one process per host, each reading its own
# slice of the data, jax.distributed started on every worker (it finds the others itself).
# Training runs detached on the workers: a dropped SSH connection stops nothing, and
# running the same command again attaches to the run (or resumes it once it has stopped).
#
#   launch/tpu_pod.sh --bucket=gs://my-bucket --run=voc-1464 --data=gs://my-bucket/VOCdevkit \
#       -- --config.data.root=/tmp/cct_data/VOCdevkit/VOC2012 \
#       --config.model.pretrained=gs://my-bucket/resnet50_deep.npz
#   launch/tpu_pod.sh --bucket=gs://my-bucket --run=voc-1464 --follow   # its console log
#   launch/tpu_pod.sh --help          # every option
#   launch/tpu_pod.sh --dry-run ...   # print the commands instead of running them
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

NAME=cct-jax
ZONE=us-central2-b
ACCELERATOR=v4-32
VERSION=""  # from the accelerator type (runtime_version)
PROJECT=""
BUCKET=""
CONFIG=configs/voc.py
RUN=""
DATA=""
DATA_DIR=/tmp/cct_data
SPOT=0
QUEUED=0
FOLLOW=1
FOLLOW_ONLY=0
POLL_SECONDS=30
PYTHON=""  # checks the config here; default: .venv/bin/python when there is one
DRY_RUN=0
EXTRA=()

usage() {
  cat <<EOF
Usage: launch/tpu_pod.sh --bucket=gs://BUCKET [options] [-- cct_jax.main flags]

Creates the TPU VM pod slice NAME (or reuses it when it exists), copies this checkout to
every worker, installs Python 3.12, jax[tpu] and cct-jax there, optionally copies a
dataset from the bucket to each worker's disk, and starts training on all workers at once
(gcloud compute tpus tpu-vm ssh --worker=all), detached from the SSH session (setsid),
then follows worker 0's console log. Checkpoints, metrics.jsonl, TensorBoard and results
go to gs://BUCKET/runs/RUN; every worker writes its part of each checkpoint there. Each
worker's console log is ~/cct-runs/RUN/console.log, copied to gs://BUCKET/runs/RUN/console/
when training ends. Run the same command again: while RUN trains, it only attaches to the
log; once RUN has stopped (preempted, failed, done), it starts it again, and training
resumes from the latest checkpoint. Flags after -- go to python -m cct_jax.main (config
overrides: --config.optim.lr=0.02).

Before anything is created, this checkout's Python (--python) reads the config and the
flags after -- as cct_jax.main will and runs the config's checks; ImageNet weights on a
bucket (--config.model.pretrained=gs://...) are looked up with gcloud storage. The
weights' .npz goes in the bucket, or in this checkout, which travels (a relative path).

Options (--opt=VALUE or --opt VALUE):
  --bucket=gs://B          bucket for the workdir (required)
  --name=NAME              TPU VM name (default: $NAME)
  --zone=ZONE              zone (default: $ZONE)
  --accelerator-type=T     slice to create (default: $ACCELERATOR)
  --version=V              TPU VM software version (default: the accelerator's, as
                           cloud.google.com/tpu/docs/runtimes names them: v2, v3, v4
                           tpu-ubuntu2204-base; v5e (v5litepod-N) v2-alpha-tpuv5-lite;
                           v5p v2-alpha-tpuv5; v6e v2-alpha-tpuv6e)
  --project=P              Google Cloud project (default: gcloud's configured one)
  --spot                   create the slice as Spot VMs
  --queued                 ask for the slice as the queued resource NAME and wait until it
                           is ACTIVE (how Spot and v5e / v6e capacity is usually had); a
                           FAILED or SUSPENDED one (a preempted Spot slice) is deleted and
                           asked for again
  --config=FILE[:ARG]      config file in this checkout (default: $CONFIG)
  --run=RUN                run name; workdir gs://B/runs/RUN (default: the config's name)
  --data=gs://B/PATH       copy this bucket folder to $DATA_DIR on every worker first;
                           point the config at it (--config.data.root=$DATA_DIR/...)
  --python=PATH            Python that checks the config here (default: .venv/bin/python;
                           none there: the config is not checked)
  --follow                 only follow worker 0's console log of RUN (Ctrl-C stops the
                           following, not the training)
  --no-follow              start (or find) the run, then return
  --dry-run                check the config, print the commands, run nothing (not even
                           gcloud look-ups)
  -h, --help               this help

The global batch (data.batch_size_labelled / _unlabelled) is split over all the slice's
TPU cores: it must be a multiple of their number (v4-32: 16 chips, 32 cores as 16
devices). See README.md, "Scaling out", for the learning rate.
EOF
}

die() { echo "error: $*" >&2; exit 2; }

# The TPU VM software version for an accelerator type, as Google's table of them names it
# (cloud.google.com/tpu/docs/runtimes: the base images to install JAX on); fails for a
# generation it does not name.
runtime_version() {
  case $1 in
    v2-*|v3-*|v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

while (($#)); do
  arg=$1
  shift
  case $arg in
    --) EXTRA=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; continue ;;
    --spot) SPOT=1; continue ;;
    --queued) QUEUED=1; continue ;;
    --follow) FOLLOW_ONLY=1; continue ;;
    --no-follow) FOLLOW=0; continue ;;
    --*=*) key=${arg%%=*}; value=${arg#*=} ;;
    --*) key=$arg; (($#)) || die "$arg needs a value"; value=$1; shift ;;
    *) die "unexpected argument '$arg' (flags for cct_jax.main go after --)" ;;
  esac
  case $key in
    --bucket) BUCKET=${value%/} ;;
    --name) NAME=$value ;;
    --zone) ZONE=$value ;;
    --accelerator-type) ACCELERATOR=$value ;;
    --version) VERSION=$value ;;
    --project) PROJECT=$value ;;
    --config) CONFIG=$value ;;
    --run) RUN=$value ;;
    --data) DATA=${value%/} ;;
    --python) PYTHON=$value ;;
    *) die "unknown option $key (see --help)" ;;
  esac
done

[[ $BUCKET == gs://* ]] || die "--bucket=gs://BUCKET is required (see --help)"
[[ -z $DATA || $DATA == gs://* ]] || die "--data must be a gs:// folder"
[[ -f $REPO/${CONFIG%%:*} ]] || die "no config file $REPO/${CONFIG%%:*}"
if [[ -z $VERSION ]]; then
  VERSION=$(runtime_version "$ACCELERATOR") ||
    die "no TPU software version known for --accelerator-type=$ACCELERATOR; pass --version"
fi
if [[ -n $PYTHON ]]; then
  [[ -x $PYTHON ]] || die "--python=$PYTHON: no such interpreter"
elif [[ -x $REPO/.venv/bin/python ]]; then
  PYTHON=$REPO/.venv/bin/python
fi
if [[ -z $RUN ]]; then
  RUN=$(basename "${CONFIG%%:*}" .py)
fi
[[ $RUN =~ ^[A-Za-z0-9._-]+$ ]] || die "--run takes letters, digits, '.', '_' and '-' only"
WORKDIR=$BUCKET/runs/$RUN
# On every worker: RUN's console log and its training's process id.
RUN_DIR="\$HOME/cct-runs/$RUN"

GCLOUD=(gcloud compute tpus tpu-vm)
QUEUED_RESOURCES=(gcloud compute tpus queued-resources)
WHERE=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then
  WHERE+=(--project="$PROJECT")
fi

# shellcheck source=SCRIPTDIR/lib.sh
source "$REPO/launch/lib.sh"  # quote, command_line, run, check_run

# Runs a shell command line on every worker of the slice.
on_all_workers() {
  run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$1"
}

# Worker 0's console log, until its training process ends (tail --pid) or Ctrl-C.
follow=("${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=0
        --command="tail -n 100 -F --pid=\"\$(cat $RUN_DIR/train.pid)\" $RUN_DIR/console.log")
# Succeeds on a worker where RUN's training process is alive (its process id, not reused
# by another program since, nor a zombie).
is_training="ps -ww -o args= -p \"\$(cat $RUN_DIR/train.pid 2>/dev/null)\" 2>/dev/null"
is_training+=" | grep -q cct_jax.main"

if ((FOLLOW_ONLY)); then
  run "${follow[@]}"
  exit
fi

# 0. What the run would stop on as it starts, checked here before a slice is paid for.
train_flags=(--config="$CONFIG" --workdir="$WORKDIR" ${EXTRA[@]+"${EXTRA[@]}"})
if [[ -n $PYTHON ]]; then
  bucket_weights=$(check_run "$PYTHON" 0 "${train_flags[@]}")
  if [[ -n $bucket_weights ]]; then
    run gcloud storage ls "$bucket_weights" ||
      die "model.pretrained=$bucket_weights: no such file in the bucket"
  fi
else
  echo "# the config is not checked here: no .venv/bin/python (make creates it) nor --python"
fi

# The state of the queued resource NAME (ACTIVE, WAITING_FOR_RESOURCES, ...); '' if none.
queued_state() {
  "${QUEUED_RESOURCES[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state.state)' \
    2>/dev/null || true
}

wait_until_active() {
  local state
  while state=$(queued_state) && [[ $state != ACTIVE ]]; do
    case $state in
      FAILED|SUSPENDED|'') die "queued resource $NAME is ${state:-gone}; run again to ask anew" ;;
      *) echo "queued resource $NAME: $state (next look in $POLL_SECONDS s)" ;;
    esac
    sleep "$POLL_SECONDS"
  done
}

# 1. The slice, reused when it exists (then RUN may be training there already).
reused=0
if ((QUEUED)); then
  create=("${QUEUED_RESOURCES[@]}" create "$NAME" --node-id="$NAME" "${WHERE[@]}"
          --accelerator-type="$ACCELERATOR" --runtime-version="$VERSION")
else
  create=("${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR"
          --version="$VERSION")
fi
if ((SPOT)); then
  create+=(--spot)
fi
if ((DRY_RUN)); then
  if ((QUEUED)); then
    echo "# when '${QUEUED_RESOURCES[*]} describe $NAME' finds none (a FAILED or SUSPENDED" \
         "one is deleted first), then waiting until it is ACTIVE:"
  else
    echo "# when '${GCLOUD[*]} describe $NAME' finds no slice:"
  fi
  run "${create[@]}"
  echo "# when the slice exists and $RUN trains there already, only: $(command_line "${follow[@]}")"
elif ((QUEUED)); then
  state=$(queued_state)
  case $state in
    ACTIVE) reused=1; echo "reusing the queued resource $NAME in $ZONE" ;;
    FAILED|SUSPENDED)
      run "${QUEUED_RESOURCES[@]}" delete "$NAME" "${WHERE[@]}" --force --quiet
      run "${create[@]}" ;;
    '') run "${create[@]}" ;;
    *) echo "queued resource $NAME: $state" ;;
  esac
  wait_until_active
elif "${GCLOUD[@]}" describe "$NAME" "${WHERE[@]}" >/dev/null 2>&1; then
  reused=1
  echo "reusing the TPU VM $NAME in $ZONE"
else
  run "${create[@]}"
fi

# RUN training there already (the connection that started it dropped): attach to it.
if ((reused)) &&
   "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=0 --command="$is_training" >/dev/null 2>&1
then
  echo "$RUN trains on $NAME already (Ctrl-C stops following its log, not the training)"
  if ((FOLLOW)); then
    run "${follow[@]}"
  fi
  exit
fi

# 2. This checkout (without .git, runs and the Makefile's environments: .venv,
# .venv-latest, .venv-uv), to ~/cct-jax on every worker.
archive=/tmp/cct-jax-$$.tar.gz
run tar -czf "$archive" -C "$REPO" --exclude=./.git --exclude="./.venv*" --exclude=./runs \
    --exclude=__pycache__ --exclude="*.egg-info" .
run "${GCLOUD[@]}" scp "$archive" "$NAME:cct-jax.tar.gz" "${WHERE[@]}" --worker=all
on_all_workers 'rm -rf ~/cct-jax && mkdir -p ~/cct-jax && tar -xzf ~/cct-jax.tar.gz -C ~/cct-jax'
if ((!DRY_RUN)); then
  rm -f "$archive"
fi

# 3. Python 3.12 (uv fetches it when the image has an older one), jax[tpu] and cct-jax with
#    its bucket support (gcsfs, google-cloud-storage) in ~/cct-venv.
# shellcheck disable=SC2016  # $HOME and $PATH are the worker's
on_all_workers 'set -e; export PATH=$HOME/.local/bin:$PATH; command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh; uv venv --quiet --allow-existing --python 3.12 ~/cct-venv; uv pip install --quiet --python ~/cct-venv/bin/python "jax[tpu]>=0.11,<0.13" -e ~/cct-jax"[gcs]"'

# 4. The dataset, from the bucket to every worker's disk.
if [[ -n $DATA ]]; then
  on_all_workers "mkdir -p $DATA_DIR && gcloud storage rsync --recursive --quiet $(quote "$DATA") $DATA_DIR/$(basename "$DATA")"
fi

# 5. Training on all workers at once, each in a session of its own (setsid: neither the
#    SSH connection's end nor its SIGHUP reaches it), the console appended to RUN's
#    console.log and copied to the bucket when training ends. A worker where RUN still
#    trains starts nothing. --multihost starts jax.distributed, which detects the slice;
#    the trainer resumes from the latest checkpoint in the workdir.
train=(../cct-venv/bin/python -m cct_jax.main --multihost "${train_flags[@]}")
log="$RUN_DIR/console.log"
detached="cd ~/cct-jax && PYTHONUNBUFFERED=1 $(command_line "${train[@]}") >> $log 2>&1"
detached+="; status=\$?; gcloud storage cp $log $(quote "$WORKDIR/console")/\$(hostname).log"
detached+="; exit \$status"
start="setsid bash -c $(quote "$detached") < /dev/null > /dev/null 2>&1 & echo \$! > $RUN_DIR/train.pid"
on_all_workers "mkdir -p $RUN_DIR && if $is_training; then echo \"\$(hostname): $RUN trains already\"; else $start; fi"
echo "workdir: $WORKDIR (tensorboard --logdir $WORKDIR/tensorboard)"
echo "console log: launch/tpu_pod.sh --bucket=$BUCKET --name=$NAME --zone=$ZONE --run=$RUN --follow"
if ((FOLLOW)); then
  run "${follow[@]}"
fi
