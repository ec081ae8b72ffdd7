# Two commands for a newcomer:  `make demo`  and  `make test`.
# Each creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean-outputs

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

## Run the main job: the four notebooks, headless, on MVTEC_ROOT if set, else on the built-in sample.
demo: $(STAMP)
	$(PY) -m colab_utils demo --out outputs

## Run every test (real MVTec tests run when MVTEC_ROOT points at an MVTec AD folder).
test: $(STAMP)
	$(PY) -m ruff check colab_utils tests benchmarks notebooks
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check colab_utils tests benchmarks notebooks

bench: $(STAMP)
	$(PY) benchmarks/quality.py --data-root $${MVTEC_ROOT:?set MVTEC_ROOT} --out outputs/bench

clean-outputs:
	rm -rf outputs
