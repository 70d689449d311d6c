#!/usr/bin/env bash
# Trains cct-jax on N Slurm nodes x M GPUs: one process per GPU (default) or per node,
# jax.distributed started in each (it reads the Slurm environment itself).
#
#   launch/slurm_gpu.sh --nodes=2 --gpus-per-node=8 --workdir=/shared/runs/voc \
#       -- --config.data.root=/shared/VOCdevkit/VOC2012 --config.model.pretrained=resnet50_deep.npz
#   launch/slurm_gpu.sh --help          # every option
#   launch/slurm_gpu.sh --dry-run ...   # check, print the sbatch and srun lines, run nothing
#
# Outside an allocation it submits itself with sbatch; inside one (the batch job, or
# salloc) it starts the processes with srun. Near the time limit the run saves and the job
# requeues itself; a requeued or preempted job resumes from the workdir.
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
CPUS_PER_GPU=8
CPUS=""
GRACE=300
# The exit status of a hang or a lost process (cct_jax/watchdog.py), on which the job
# requeues itself, at most MAX_RESTARTS times (Slurm's SLURM_RESTART_COUNT), so that a
# fault that comes back every time does not requeue for ever.
RESTARTABLE=75
MAX_RESTARTS=3
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
Flags after -- go to cct_jax.main (config overrides: --config.optim.lr=0.02); the
ImageNet weights (--config.model.pretrained=FILE.npz) are read from the shared filesystem,
a relative path from the checkout.

Before sbatch, so that no job waits in the queue to fail: the interpreter (--python) reads
the config and the flags after -- as cct_jax.main will, runs the config's checks, and
checks that the global batch divides over N x M GPUs.

Options (--opt=VALUE or --opt VALUE):
  --workdir=DIR          shared folder for checkpoints, logs and results (required)
  --nodes=N              nodes (default: $NODES)
  --gpus-per-node=M      GPUs on each node (default: $GPUS)
  --per-node             one process per node driving its M GPUs (default: one per GPU)
  --partition=P          Slurm partition
  --account=A            Slurm account
  --time=T               time limit (default: $TIME)
  --cpus-per-task=C      CPU cores per process, for its input pipeline (default: $CPUS_PER_GPU per
                         GPU it drives: $CPUS_PER_GPU, or $CPUS_PER_GPU x M with --per-node)
  --grace-seconds=S      how long before the time limit the job is told to stop (default:
                         $GRACE): the processes save a checkpoint and exit, then the job requeues
                         itself and resumes; S must cover a step, the stop, and a save
  --config=FILE[:ARG]    config file in the checkout (default: $CONFIG)
  --python=PATH          Python of the environment (default: .venv/bin/python)
  --dry-run              check as above, print the sbatch / srun commands, run nothing
  -h, --help             this help

The global batch (data.batch_size_labelled / _unlabelled) is split over all N x M GPUs:
it must be a multiple of N x M. See README.md, "Scaling out", for the learning rate.

Stopping and coming back: sbatch --signal=B:USR1@S tells this script S seconds before the
time limit; it sends SIGTERM to the processes (scancel --signal=TERM), which agree on a
step, save a checkpoint and exit, and then requeues the job (scontrol requeue), which
resumes from DIR. A SIGTERM to the job (scancel, preemption), or Ctrl-C under salloc,
stops the processes the same way; --requeue lets Slurm requeue a preempted job or one
whose node failed. The job's output (%x-%j.out) is appended to across requeues.
EOF
}

die() { echo "error: $*" >&2; exit 2; }

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
    --cpus-per-task) CPUS=$value ;;
    --grace-seconds) GRACE=$value ;;
    --config) CONFIG=$value ;;
    --python) PYTHON=$value ;;
    *) die "unknown option $key (see --help)" ;;
  esac
done

[[ -n $WORKDIR ]] || die "--workdir=DIR is required (see --help)"
[[ $NODES =~ ^[1-9][0-9]*$ && $GPUS =~ ^[1-9][0-9]*$ ]] ||
  die "--nodes and --gpus-per-node must be positive integers"
[[ -z $CPUS || $CPUS =~ ^[1-9][0-9]*$ ]] || die "--cpus-per-task must be a positive integer"
[[ $GRACE =~ ^[1-9][0-9]*$ ]] || die "--grace-seconds must be a positive integer"
if ((PER_NODE)); then
  TASKS=1
  CPUS=${CPUS:-$((CPUS_PER_GPU * GPUS))}
else
  TASKS=$GPUS
  CPUS=${CPUS:-$CPUS_PER_GPU}
fi

# shellcheck source=SCRIPTDIR/lib.sh
source "$REPO/launch/lib.sh"  # quote, run, check_run

# Inside the allocation: NODES x TASKS processes. jax takes the coordinator (the first
# node), the process count and each process's id from Slurm; with one process per GPU it
# drives GPU $SLURM_LOCALID, with one per node JAX_LOCAL_DEVICE_IDS lists all M.
# srun takes --cpus-per-task itself: since Slurm 22.05 it no longer inherits sbatch's.
srun_command=(srun --nodes="$NODES" --ntasks-per-node="$TASKS" --gpus-per-node="$GPUS"
              --cpus-per-task="$CPUS" --kill-on-bad-exit=1)
if ((PER_NODE)); then
  device_ids=$(seq -s, 0 $((GPUS - 1)))
  srun_command+=("--export=ALL,JAX_LOCAL_DEVICE_IDS=$device_ids")
fi
srun_command+=("$PYTHON" -m cct_jax.main --multihost --config="$CONFIG" --workdir="$WORKDIR"
               ${EXTRA[@]+"${EXTRA[@]}"})

# The job's side of a stop: every step of job $1 (the training processes, not this shell)
# gets SIGTERM, saves a checkpoint and exits.
stop_steps() {
  run scancel --signal=TERM "$1"
}

if [[ -n ${SLURM_JOB_ID:-} ]]; then
  cd "$REPO"
  export PYTHONUNBUFFERED=1
  requeue=0
  trap 'requeue=1; stop_steps "$SLURM_JOB_ID"' USR1  # the time limit is --grace-seconds away
  # scancel or preemption (Slurm decides what follows), or Ctrl-C under salloc.
  trap 'stop_steps "$SLURM_JOB_ID"' TERM INT
  run "${srun_command[@]}" &
  step=$!
  # A trapped signal ends `wait` early (with 128 + its number): wait until srun itself has
  # ended, then take its own status (bash keeps it after the process is reaped).
  while kill -0 "$step" 2>/dev/null; do
    wait "$step" || true
  done
  status=0
  wait "$step" || status=$?
  if ((requeue && status == 0)); then
    echo "stopped $GRACE s before the time limit; requeueing job $SLURM_JOB_ID to resume"
    run scontrol requeue "$SLURM_JOB_ID"
  elif ((status == RESTARTABLE && ${SLURM_RESTART_COUNT:-0} < MAX_RESTARTS)); then
    # A hang or a lost process (cct_jax/watchdog.py): the checkpoint before it resumes.
    echo "training stopped with status $status (a hang or a lost process, see above);" \
         "requeueing job $SLURM_JOB_ID to resume (restart $((${SLURM_RESTART_COUNT:-0} + 1))" \
         "of at most $MAX_RESTARTS)"
    run scontrol requeue "$SLURM_JOB_ID"
  elif ((requeue)); then
    echo "not requeued: srun ended with status $status" >&2
  fi
  exit "$status"
fi

# Outside the allocation: what the run would stop on as it starts, checked before a job
# waits in the queue for it.
[[ -f $REPO/${CONFIG%%:*} ]] || die "no config file $REPO/${CONFIG%%:*}"
[[ -x $PYTHON ]] || die "--python=$PYTHON: no such interpreter (set up the environment as" \
                        "--help says)"
check_run "$PYTHON" $((NODES * GPUS)) --config="$CONFIG" --workdir="$WORKDIR" \
    ${EXTRA[@]+"${EXTRA[@]}"} >/dev/null

sbatch_command=(sbatch --nodes="$NODES" --ntasks-per-node="$TASKS" --gpus-per-node="$GPUS"
                --cpus-per-task="$CPUS" --time="$TIME" --signal="B:USR1@$GRACE" --requeue
                --open-mode=append --chdir="$REPO")
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
  echo "# and on USR1, $GRACE s before the time limit (then, once srun has returned, requeue):"
  stop_steps JOBID
  run scontrol requeue JOBID
fi
