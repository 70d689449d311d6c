#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 interpreter, trying python3.13, python3.12, python3 on
# PATH and then pyenv's installed versions. A pyenv shim for a version that is installed but
# not selected fails when run, so every candidate is run, not just looked up.
set -u

ok() {  # ok PYTHON: succeeds when PYTHON runs and is at least 3.12
  "$1" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1
}

candidates=(python3.13 python3.12 python3)
root=$( (command -v pyenv >/dev/null 2>&1 && pyenv root) || echo "${PYENV_ROOT:-$HOME/.pyenv}")
for dir in $(ls -d "$root"/versions/3.1[2-9]* 2>/dev/null | sort -rV); do
  candidates+=("$dir/bin/python3")
done

for candidate in "${candidates[@]}"; do
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if ok "$path"; then
    echo "$path"
    exit 0
  fi
done

echo "error: cct-jax needs Python >= 3.12 (jax 0.12 does), and none was found." >&2
echo "Tried: ${candidates[*]}. Install one (e.g. 'pyenv install 3.13' or your system's" >&2
echo "python3.12 package), or run 'make PYTHON=/path/to/python3.12 ...'." >&2
exit 1
