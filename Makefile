# The two set-up commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# On CPU machines torch==2.13.0 is a local CPU wheel; a user with a GPU may install
# their own torch into .venv first (any version the package range admits is kept).
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test env clean

$(BIN)/knowtune: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/knowtune

env: $(BIN)/knowtune

demo: env
	$(BIN)/knowtune demo

test: env
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
