# `make demo` and `make test` each build .venv from nothing when it is missing.
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell tools/find_python.sh)

.PHONY: demo test summary clean

$(VENV)/installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "No Python >= 3.12 found (see the message above)."; exit 1; }
	@echo "Creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

demo: $(VENV)/installed
	$(PY) -m cct_jax.main --config=configs/voc.py --mode=summary --workdir=runs/summary

test: $(VENV)/installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
