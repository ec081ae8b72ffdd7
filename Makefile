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

# Offline ImageNet weights: when torchvision's cache (TORCH_HOME, default ~/.cache/torch) lacks
# mobilenet_v2-b0353104.pth and a folder holding it exists (SHARED_WEIGHTS), torchvision is pointed at it.
SHARED_WEIGHTS ?= ../shared/weights
WEIGHTS_FILE   := mobilenet_v2-b0353104.pth

## Run the main job: the five notebooks, headless, on MVTEC_ROOT if set, else on the built-in sample.
demo: $(STAMP)
	@if [ ! -f "$${TORCH_HOME:-$$HOME/.cache/torch}/hub/checkpoints/$(WEIGHTS_FILE)" ] && [ -f "$(SHARED_WEIGHTS)/$(WEIGHTS_FILE)" ]; then \
	  mkdir -p outputs/torch_home/hub/checkpoints; \
	  ln -sf "$$(cd "$(SHARED_WEIGHTS)" && pwd)/$(WEIGHTS_FILE)" outputs/torch_home/hub/checkpoints/; \
	  export TORCH_HOME="$$(pwd)/outputs/torch_home"; \
	fi; \
	$(PY) -m colab_utils demo --out outputs

## Run every test (real MVTec tests run when MVTEC_ROOT points at an MVTec AD folder).
test: $(STAMP)
	$(PY) -m ruff check colab_utils tests benchmarks notebooks
	@[ -x "$${CHROMIUM:-/usr/bin/chromium}" ] || echo "note: no Chromium at $${CHROMIUM:-/usr/bin/chromium}: the browser test of the gallery is skipped (apt-get install -y chromium)"
	$(PY) -m pytest -q --durations=8

lint: $(STAMP)
	$(PY) -m ruff check colab_utils tests benchmarks notebooks

bench: $(STAMP)
	$(PY) benchmarks/quality.py --data-root $${MVTEC_ROOT:?set MVTEC_ROOT} --out outputs/bench

clean-outputs:
	rm -rf outputs
