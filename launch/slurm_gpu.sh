#!/usr/bin/env bash
# Trains cct-jax on N Slurm nodes x M GPUs: one process per GPU (default) or per node,
# jax.distributed started in each (it reads the Slurm environment itself).
#
#   launch/slurm_gpu.sh --nodes=2 --gpus-per-node=8 --workdir=/shared/runs/voc \
#       -- --config.data.root=/shared/VOCdevkit/VOC2012
#   launch/slurm_gpu.sh --help          # every option
#   launch/slurm_gpu.sh --dry-run ...   # print the sbatch and srun lines, run nothing
#
# Outside an allocation it submits itself with sbatch; inside one (the batch job, or
# salloc) it starts the processes with srun.
#SBATCH --job-name=cct-jax
#SBATCH --output=%x-%j.out
set -euo pipefail

# The checkout: beside this script, or (sbatch runs a copy of it) the job's directory.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -d $here/../cct_jax ]]; then
  REPO=$(cd "$here/.." && pwd)
else
  REPO=$PWD
fi

NODES=1
GPUS=8
PER_NODE=0
PARTITION=""
ACCOUNT=""
TIME=24:00:00
CONFIG=configs/voc.py
WORKDIR=""
PYTHON=$REPO/.venv/bin/python
DRY_RUN=0
ARGS=()  # the options again, for the job (without --dry-run)
EXTRA=()

usage() {
  cat <<EOF
Usage: launch/slurm_gpu.sh --workdir=DIR [options] [-- cct_jax.main flags]

Runs python -m cct_jax.main --multihost on NODES x GPUS GPUs. The checkout, its Python
environment, the data and the workdir must be on a filesystem every node sees; set up the
environment once with
  python3.12 -m venv .venv && .venv/bin/pip install -e . "jax[cuda12]>=0.11,<0.13"
Run the same command again to resume from the latest checkpoint in DIR.
Flags after -- go to cct_jax.main (config overrides: --config.optim.lr=0.02).

Options (--opt=VALUE or --opt VALUE):
  --workdir=DIR          shared folder for checkpoints, logs and results (required)
  --nodes=N              nodes (default: $NODES)
  --gpus-per-node=M      GPUs on each node (default: $GPUS)
  --per-node             one process per node driving its M GPUs (default: one per GPU)
  --partition=P          Slurm partition
  --account=A            Slurm account
  --time=T               time limit (default: $TIME)
  --config=FILE[:ARG]    config file in the checkout (default: $CONFIG)
  --python=PATH          Python of the environment (default: .venv/bin/python)
  --dry-run              print the sbatch / srun commands, run nothing
  -h, --help             this help

The global batch (data.batch_size_labelled / _unlabelled) is split over all N x M GPUs:
it must be a multiple of N x M. See README.md, "Scaling out", for the learning rate.
EOF
}

die() { echo "slurm_gpu.sh: $*" >&2; exit 2; }

while (($#)); do
  arg=$1
  shift
  case $arg in
    --) EXTRA=("$@"); ARGS+=(-- "$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; continue ;;
    --per-node) PER_NODE=1; ARGS+=("$arg"); continue ;;
    --*=*) key=${arg%%=*}; value=${arg#*=}; ARGS+=("$arg") ;;
    --*) key=$arg; (($#)) || die "$arg needs a value"; value=$1; shift; ARGS+=("$arg=$value") ;;
    *) die "unexpected argument '$arg' (flags for cct_jax.main go after --)" ;;
  esac
  case $key in
    --workdir) WORKDIR=$value ;;
    --nodes) NODES=$value ;;
    --gpus-per-node) GPUS=$value ;;
    --partition) PARTITION=$value ;;
    --account) ACCOUNT=$value ;;
    --time) TIME=$value ;;
    --config) CONFIG=$value ;;
    --python) PYTHON=$value ;;
    *) die "unknown option $key (see --help)" ;;
  esac
done

[[ -n $WORKDIR ]] || die "--workdir=DIR is required (see --help)"
[[ $NODES =~ ^[1-9][0-9]*$ && $GPUS =~ ^[1-9][0-9]*$ ]] ||
  die "--nodes and --gpus-per-node must be positive integers"
if ((PER_NODE)); then
  TASKS=1
else
  TASKS=$GPUS
fi

# shellcheck source=SCRIPTDIR/lib.sh
source "$REPO/launch/lib.sh"  # quote, run

# Inside the allocation: NODES x TASKS processes. jax takes the coordinator (the first
# node), the process count and each process's id from Slurm; with one process per GPU it
# drives GPU $SLURM_LOCALID, with one per node JAX_LOCAL_DEVICE_IDS lists all M.
srun_command=(srun --nodes="$NODES" --ntasks-per-node="$TASKS" --gpus-per-node="$GPUS"
              --kill-on-bad-exit=1)
if ((PER_NODE)); then
  device_ids=$(seq -s, 0 $((GPUS - 1)))
  srun_command+=("--export=ALL,JAX_LOCAL_DEVICE_IDS=$device_ids")
fi
srun_command+=("$PYTHON" -m cct_jax.main --multihost --config="$CONFIG" --workdir="$WORKDIR"
               ${EXTRA[@]+"${EXTRA[@]}"})

if [[ -n ${SLURM_JOB_ID:-} ]]; then
  cd "$REPO"
  export PYTHONUNBUFFERED=1
  run "${srun_command[@]}"
  exit
fi

sbatch_command=(sbatch --nodes="$NODES" --ntasks-per-node="$TASKS" --gpus-per-node="$GPUS"
                --time="$TIME" --chdir="$REPO")
if [[ -n $PARTITION ]]; then
  sbatch_command+=(--partition="$PARTITION")
fi
if [[ -n $ACCOUNT ]]; then
  sbatch_command+=(--account="$ACCOUNT")
fi
sbatch_command+=("$REPO/launch/slurm_gpu.sh" ${ARGS[@]+"${ARGS[@]}"})
run "${sbatch_command[@]}"
if ((DRY_RUN)); then
  echo "# then, in the job:"
  run "${srun_command[@]}"
fi
