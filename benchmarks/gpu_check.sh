#!/usr/bin/env bash
# The GPU check in one call: the paper's train step (float32 and bfloat16) and evaluation,
# then the authors' PyTorch step (benchmarks/gpu_check.py says what each measures). From the
# repository root of the GPU machine, with refcode/ and .whl/ carried (README, "On a
# GPU"):
#   bash benchmarks/gpu_check.sh             # JSON to $OUT/gpu_check.json, under 6 minutes
#   bash benchmarks/gpu_check.sh --smoke     # on a CPU: the tiny model, the same code path
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# That machine has jax, flax, optax and orbax but not ml_collections: it comes as a wheel.
if ! "$PYTHON" -c 'import ml_collections' 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target /tmp/cct_site .whl/*.whl
  export PYTHONPATH=/tmp/cct_site${PYTHONPATH:+:$PYTHONPATH}
fi
# The authors' code (github.com/yassouali/CCT at 65d4e5b), carried in refcode/CCT.
export CCT_REF=${CCT_REF:-$PWD/refcode/CCT}
exec "$PYTHON" benchmarks/gpu_check.py --out "${OUT:-benchmarks/results}/gpu_check.json" "$@"
