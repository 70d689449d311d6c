#!/usr/bin/env bash
# Trains cct-jax on a Cloud TPU VM pod slice: one process per host, each reading its own
# slice of the data, jax.distributed started on every worker (it finds the others itself).
#
#   launch/tpu_pod.sh --bucket=gs://my-bucket --run=voc-1464 --data=gs://my-bucket/VOCdevkit \
#       -- --config.data.root=/tmp/cct_data/VOCdevkit/VOC2012
#   launch/tpu_pod.sh --help          # every option
#   launch/tpu_pod.sh --dry-run ...   # print the commands instead of running them
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

NAME=cct-jax
ZONE=us-central2-b
ACCELERATOR=v4-32
VERSION=tpu-ubuntu2204-base
PROJECT=""
BUCKET=""
CONFIG=configs/voc.py
RUN=""
DATA=""
DATA_DIR=/tmp/cct_data
SPOT=0
DRY_RUN=0
EXTRA=()

usage() {
  cat <<EOF
Usage: launch/tpu_pod.sh --bucket=gs://BUCKET [options] [-- cct_jax.main flags]

Creates the TPU VM pod slice NAME (or reuses it when it exists), copies this checkout to
every worker, installs Python 3.12, jax[tpu] and cct-jax there, optionally copies a
dataset from the bucket to each worker's disk, and starts training on all workers at once
(gcloud compute tpus tpu-vm ssh --worker=all). Checkpoints, metrics.jsonl, TensorBoard and
results go to gs://BUCKET/runs/RUN; every worker writes its part of each checkpoint there.
Flags after -- go to python -m cct_jax.main (config overrides: --config.optim.lr=0.02).

Options (--opt=VALUE or --opt VALUE):
  --bucket=gs://B          bucket for the workdir (required)
  --name=NAME              TPU VM name (default: $NAME)
  --zone=ZONE              zone (default: $ZONE)
  --accelerator-type=T     slice to create (default: $ACCELERATOR)
  --version=V              TPU VM software version (default: $VERSION; v5e:
                           v2-alpha-tpuv5-lite, v6e: v2-alpha-tpuv6e)
  --project=P              Google Cloud project (default: gcloud's configured one)
  --spot                   create the slice as Spot VMs
  --config=FILE[:ARG]      config file in this checkout (default: $CONFIG)
  --run=RUN                run name; workdir gs://B/runs/RUN (default: the config's name)
  --data=gs://B/PATH       copy this bucket folder to $DATA_DIR on every worker first;
                           point the config at it (--config.data.root=$DATA_DIR/...)
  --dry-run                print the commands, run nothing (not even gcloud look-ups)
  -h, --help               this help

The global batch (data.batch_size_labelled / _unlabelled) is split over all the slice's
TPU cores: it must be a multiple of their number (v4-32: 16 chips, 32 cores as 16
devices). See README.md, "Scaling out", for the learning rate.
EOF
}

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

while (($#)); do
  arg=$1
  shift
  case $arg in
    --) EXTRA=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; continue ;;
    --spot) SPOT=1; continue ;;
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
    *) die "unknown option $key (see --help)" ;;
  esac
done

[[ $BUCKET == gs://* ]] || die "--bucket=gs://BUCKET is required (see --help)"
[[ -z $DATA || $DATA == gs://* ]] || die "--data must be a gs:// folder"
[[ -f $REPO/${CONFIG%%:*} ]] || die "no config file $REPO/${CONFIG%%:*}"
if [[ -z $RUN ]]; then
  RUN=$(basename "${CONFIG%%:*}" .py)
fi
WORKDIR=$BUCKET/runs/$RUN

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then
  WHERE+=(--project="$PROJECT")
fi

# shellcheck source=SCRIPTDIR/lib.sh
source "$REPO/launch/lib.sh"  # quote, run

# Runs a shell command line on every worker of the slice.
on_all_workers() {
  run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$1"
}

# 1. The slice: reused when it exists.
create=("${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR"
        --version="$VERSION")
if ((SPOT)); then
  create+=(--spot)
fi
if ((DRY_RUN)); then
  echo "# when '${GCLOUD[*]} describe $NAME' finds no slice:"
  run "${create[@]}"
elif "${GCLOUD[@]}" describe "$NAME" "${WHERE[@]}" >/dev/null 2>&1; then
  echo "reusing the TPU VM $NAME in $ZONE"
else
  run "${create[@]}"
fi

# 2. This checkout (without .git, .venv, runs), to ~/cct-jax on every worker.
archive=/tmp/cct-jax-$$.tar.gz
run tar -czf "$archive" -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=./runs \
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

# 5. Training on all workers at once; --multihost starts jax.distributed, which detects the
#    slice. Run the same command again to resume from the latest checkpoint.
train=(../cct-venv/bin/python -m cct_jax.main --multihost --config="$CONFIG"
       --workdir="$WORKDIR" ${EXTRA[@]+"${EXTRA[@]}"})
train_line=""
for word in "${train[@]}"; do
  train_line+=" $(quote "$word")"
done
on_all_workers "cd ~/cct-jax && PYTHONUNBUFFERED=1${train_line}"
echo "workdir: $WORKDIR (tensorboard --logdir $WORKDIR/tensorboard)"
