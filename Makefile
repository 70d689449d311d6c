# `make demo` and `make test` each build .venv from nothing when it is missing.
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell tools/find_python.sh)
# libtpu (the release that pairs with jax 0.12.0.1) compiles for TPU slices on this machine
# (--mode=compile). Outside the venv's import path: where jax finds it, every start off a
# TPU looks for TPU hosts and prints errors. TPU_LIBRARY_PATH=$(LIBTPU) points at it.
LIBTPU_DIR := $(VENV)/libtpu
LIBTPU := $(abspath $(LIBTPU_DIR))/libtpu/libtpu.so

.PHONY: demo test clean

$(VENV)/installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "No Python >= 3.12 found (see the message above)."; exit 1; }
	@echo "Creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet setuptools 'cython>=3,<4'
	$(PY) -m pip install --quiet --no-build-isolation pydensecrf2==1.1
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps --target $(LIBTPU_DIR) 'libtpu==0.0.51'
	@touch $@

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
	@echo "metrics.jsonl, tensorboard/ (tensorboard --logdir $(DEMO)), checkpoints/, best/."

# Two workers: most of a test's time is XLA compiling, one core each. A test file runs on
# one worker, so its module fixtures (a trained smoke run) are made once.
test: $(VENV)/installed
	TPU_LIBRARY_PATH=$(LIBTPU) $(PY) -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) runs
