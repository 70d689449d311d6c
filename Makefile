# `make demo` and `make test` each build .venv from nothing when it is missing, and again
# when the lock changes: every package at the version requirements/lock.txt gives it.
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell tools/find_python.sh)
LOCK := requirements/lock.txt
INSTALL := $(PY) -m pip install --quiet -c $(LOCK)
# libtpu (the lock's release; requirements/lock.in says why that one) compiles for TPU
# slices on this machine (--mode=compile). Outside the venv's import path: where jax finds
# it, every start off a TPU looks for TPU hosts and prints errors. TPU_LIBRARY_PATH=$(LIBTPU)
# points at it.
LIBTPU_DIR := $(VENV)/libtpu
LIBTPU := $(abspath $(LIBTPU_DIR))/libtpu/libtpu.so

.PHONY: demo test test-latest lock clean

$(VENV)/installed: pyproject.toml $(LOCK)
	@test -n "$(PYTHON)" || { echo "No Python >= 3.12 found (see the message above)."; exit 1; }
	@echo "Creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv --clear $(VENV)
	$(INSTALL) --upgrade pip
	$(INSTALL) setuptools cython
	$(INSTALL) --no-build-isolation pydensecrf2
	$(INSTALL) -e '.[dev]'
	$(INSTALL) --no-deps --target $(LIBTPU_DIR) libtpu
	@touch $@

# The lock is for Linux x86_64 (glibc 2.31 and later: libtpu's wheels need it) and Python
# 3.13; 3.12 resolves to the same pins. uv keeps the pins already in it that still fit:
# delete it first to take the newest of everything.
UV := .venv-uv/bin/uv

$(UV):
	$(PYTHON) -m venv .venv-uv
	.venv-uv/bin/pip install --quiet uv==0.13.10

lock: $(UV)
	$(UV) pip compile pyproject.toml requirements/lock.in --extra dev --python-version 3.13 \
	    --python-platform x86_64-manylinux_2_31 -o $(LOCK)

DEMO := runs/demo

# Trains CCT on the texture mosaics, scores the best checkpoint on the test split, then
# predicts a folder of test images. Run again, it resumes (and so only re-evaluates).
demo: $(VENV)/installed
	$(PY) -m cct_jax.main --config=configs/demo.py --workdir=$(DEMO)
	$(PY) tools/export_images.py --config=configs/demo.py --split=test --count=8 \
	    --output=$(DEMO)/test_images
	$(PY) -m cct_jax.main --config=configs/demo.py --workdir=$(DEMO) --mode=predict \
	    --input=$(DEMO)/test_images --output=$(DEMO)/predictions
	@echo "Demo finished. In $(DEMO): results_test.json (test mIoU), predictions_test.png"
	@echo "(image | truth | prediction), predictions/ (label PNGs and overlays),"
	@echo "metrics.jsonl, tensorboard/, checkpoints/, best/. To see the curves in TensorBoard:"
	@echo "  $(VENV)/bin/pip install -c $(LOCK) -e '.[viz]'"
	@echo "  $(VENV)/bin/tensorboard --logdir $(DEMO)"

# Two workers: most of a test's time is XLA compiling, one core each. A test file runs on
# one worker, so its module fixtures (a trained smoke run) are made once.
PYTEST := pytest -q -n 2 --dist loadfile

test: $(VENV)/installed
	TPU_LIBRARY_PATH=$(LIBTPU) $(PY) -m $(PYTEST)

LATEST := .venv-latest
LIBTPU_INTO_LATEST := $(LATEST)/bin/pip install --quiet --no-deps --target $(LATEST)/libtpu
PAIRING := 'from cct_jax import compile_report as c; print(c.libtpu_requirement() or "libtpu")'

# The suite on the newest releases pyproject.toml's ranges allow, no lock: what installing
# cct-jax today gets (README, "Quick start"). The venv is made afresh, so pip takes the
# newest of everything, and libtpu is the release that jax names, or the newest there is
# while that one is not on PyPI yet.
test-latest:
	@test -n "$(PYTHON)" || { echo "No Python >= 3.12 found (see the message above)."; exit 1; }
	$(PYTHON) -m venv --clear $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip setuptools 'cython>=3,<4'
	$(LATEST)/bin/pip install --quiet --no-build-isolation pydensecrf2==1.1
	$(LATEST)/bin/pip install --quiet -e '.[dev]'
	tpu=$$($(LATEST)/bin/python -c $(PAIRING)) && { $(LIBTPU_INTO_LATEST) "$$tpu" || { \
	    echo "$$tpu is not on PyPI: the newest libtpu instead"; $(LIBTPU_INTO_LATEST) libtpu; }; }
	TPU_LIBRARY_PATH=$(abspath $(LATEST))/libtpu/libtpu/libtpu.so $(LATEST)/bin/python -m $(PYTEST)

clean:
	rm -rf $(VENV) $(LATEST) .venv-uv runs
