# Two entry points for a new user on a fresh machine (Python >= 3.10 and pip):
#   make demo   installs into .venv and runs the main job on built-in data
#   make test   installs into .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/glmha demo --threads 1  # the thread count of the README's table: the same numbers

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) glmha-demo
