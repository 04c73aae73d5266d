# The two set-up commands for a fresh machine: `make demo` and `make test`.
# `make test` runs the suite in .venv on the newest releases pyproject.toml admits (as a
# fresh install resolves them); `make test-oldest` runs it in .venv-oldest on the oldest
# supported ones (constraints/oldest.txt). .ci/run runs both.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OLDEST_VENV ?= .venv-oldest
OLDEST_BIN  := $(OLDEST_VENV)/bin
OLDEST_PINS := constraints/oldest.txt
PYTEST_ARGS ?= -q --timeout 900
# On CPU machines torch==2.13.0 is a local CPU wheel; a user with a GPU may install
# their own torch into .venv first (any version the package range admits is kept).
TORCH_SPEC ?= torch==2.13.0
VERSIONS := import torch, transformers, peft, accelerate, datasets; \
	print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, " \
	      f"accelerate {accelerate.__version__}, datasets {datasets.__version__}")

.PHONY: demo test test-oldest env env-oldest llama-server clean

# An existing .venv keeps the releases it has where they still satisfy pyproject.toml;
# `make clean` then `make test` installs the newest ones afresh.
$(BIN)/knowtune: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/knowtune

# The constraints file pins the oldest releases exactly: pip moves an existing
# .venv-oldest to them whenever the file or pyproject.toml changes.
$(OLDEST_BIN)/knowtune: pyproject.toml $(OLDEST_PINS)
	test -x $(OLDEST_BIN)/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_BIN)/python -m pip install --quiet --upgrade pip
	$(OLDEST_BIN)/python -c "import torch" 2>/dev/null || $(OLDEST_BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(OLDEST_BIN)/python -m pip install --quiet -c $(OLDEST_PINS) -e ".[dev]"
	touch $(OLDEST_BIN)/knowtune

env: $(BIN)/knowtune

env-oldest: $(OLDEST_BIN)/knowtune

demo: env
	$(BIN)/knowtune demo

# llama.cpp's llama-server (CPU), built once into ~/.cache/knowtune (docs/serving.md; needs
# cmake, make, g++): the served-audit tests run against it, and fail rather than skip without it.
llama-server: env
	$(BIN)/knowtune serve build

# pytest's own exit status fails the target, 5 (no tests collected) included.
test: env llama-server
	@$(BIN)/python -c '$(VERSIONS)'
	KNOWTUNE_REQUIRE_LLAMA_SERVER=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-oldest: env-oldest llama-server
	@$(OLDEST_BIN)/python -c '$(VERSIONS)'
	KNOWTUNE_REQUIRE_LLAMA_SERVER=1 $(OLDEST_BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(OLDEST_VENV) build *.egg-info src/*.egg-info
