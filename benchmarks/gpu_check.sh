#!/usr/bin/env bash
# The GPU check in one call: the paper's train step (float32 and bfloat16) and evaluation,
# then the authors' PyTorch step (benchmarks/gpu_check.py says what each measures). From the
# repository root of the GPU machine, with refcode/ and .whl/ carried (README, "On a
# GPU"):
#   bash benchmarks/gpu_check.sh             # JSON to $OUT/gpu_check.json, under 6 minutes
#   bash benchmarks/gpu_check.sh --smoke     # on a CPU: the tiny model, the same code path
#   bash benchmarks/gpu_check.sh --help      # every option
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# Written here rather than asked of gpu_check.py, which needs jax to start: the help comes
# with any Python, or none.
usage() {
  cat <<'HELP'
Usage: bash benchmarks/gpu_check.sh [--smoke] [gpu_check.py options]

The paper's train step (float32, bfloat16) and evaluation on this machine's accelerator,
then the authors' PyTorch step; a table, and JSON to $OUT/gpu_check.json (default
benchmarks/results/gpu_check.json). README, "On a GPU".

Options (passed to benchmarks/gpu_check.py):
  --smoke                    the tiny model with one decoder at 64 x 64 (CPU; the tests)
  --dtypes=D1,D2             the train step's dtypes (default: float32,bfloat16)
  --cct_ref=DIR              the authors' code (default: $CCT_REF, else refcode/CCT)
  --refcheck=FILE            their step's runner (default: refcode/refcheck/ref_bench.py)
  --child_timeout_s=S        each dtype's child process at most S seconds (default: 140)
  --reference_timeout_s=S    the PyTorch step at most S seconds (default: 60)
  -h, --help                 this help

Environment: PYTHON (default: python3), with jax; ml_collections is installed from .whl/
when that Python lacks it. OUT: the JSON's folder.
HELP
}

for arg in "$@"; do
  if [[ $arg == -h || $arg == --help ]]; then
    usage
    exit 0
  fi
done

# That machine has jax, flax, optax and orbax but not ml_collections: it comes as a wheel.
if ! "$PYTHON" -c 'import ml_collections' 2>/dev/null; then
  wheels=(.whl/*.whl)
  if [[ ! -f ${wheels[0]} ]]; then
    echo "error: $PYTHON cannot import ml_collections, and .whl/ holds no wheel of it" \
         "(README, \"On a GPU\")" >&2
    exit 1
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target /tmp/cct_site "${wheels[@]}"
  export PYTHONPATH=/tmp/cct_site${PYTHONPATH:+:$PYTHONPATH}
fi
# The authors' code (github.com/yassouali/CCT at 65d4e5b), carried in refcode/CCT.
export CCT_REF=${CCT_REF:-$PWD/refcode/CCT}
exec "$PYTHON" benchmarks/gpu_check.py --out "${OUT:-benchmarks/results}/gpu_check.json" "$@"
